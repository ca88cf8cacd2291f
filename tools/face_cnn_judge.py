"""The full-resolution CNN attribute judge of face_aign.py (--judge cnn / both), an instrument beside it.

face_aign.py loads this file with common.load_tool when a CNN judge is asked for (a copied script
without tools/ runs without one: --judge auto then means none on labelled --data). The judge is trained
once per dataset and attribute on held-out labelled faces (never on G's outputs; flips and blur as
augmentation, so that blur alone hardly moves it) and kept in $AIGN_CACHE/faces_judges, shared by all
seeds and runs. Never imports face_aign (the few image helpers it needs are written out below).
"""
import hashlib
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def to_float(u8):
    """uint8 (B, 3, H, W) -> float in [-1, 1] (face_aign.to_float)."""
    return u8.float() / 127.5 - 1


def u8_of(y):
    """(..., 3, H, W) in [-1, 1] -> uint8 in [0, 255] (face_aign.u8_of)."""
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class CNNJudge(nn.Module):
    """Attribute classifier on full-resolution (S x S) faces: four stride-2 convs, a linear logit on the
    S/16 x S/16 map (it keeps where things are: a mouth attribute is read at the mouth)."""

    def __init__(self, size):
        super().__init__()
        layers, c_in = [], 3
        for c in (32, 64, 128, 128):
            layers += [nn.Conv2d(c_in, c, 3, 2, 1), nn.ReLU(True)]
            c_in = c
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * (size // 16) ** 2, 1))

    def forward(self, u8):  # (B, 3, S, S) uint8 -> (B,) logits
        return self.net(to_float(u8))[:, 0]

    @torch.no_grad()
    def has(self, u8, attr):
        """(N, 3, S, S) uint8 -> (N,) bool: judged to have `attr` (the one attribute it was trained on)."""
        return torch.cat([self(u8[i:i + 256]) for i in range(0, len(u8), 256)]) > 0


def train(images, labels, size, steps):
    """A CNNJudge trained on ((N, 3, S, S) uint8, (N,) bool) with its own seed, the caller's RNG untouched;
    half of each batch flipped, half blurred (bicubic upsampling of k x k average pooling, k = 2/4/8)."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        judge = CNNJudge(size)
    g, opt = torch.Generator().manual_seed(7), torch.optim.Adam(judge.parameters(), 1e-3)
    ks = [k for k in (2, 4, 8) if size // k >= 4]
    for _ in range(steps):
        idx = torch.randint(len(images), (64,), generator=g)
        x = to_float(images[idx])  # (64, 3, S, S)
        x = torch.where(torch.rand(64, 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)
        k = ks[torch.randint(len(ks), (), generator=g)]
        blur = F.interpolate(F.avg_pool2d(x, k), scale_factor=k, mode="bicubic", align_corners=False)
        blur = blur.clamp(-1, 1)  # bicubic of k x k pooling
        x = torch.where(torch.rand(64, 1, 1, 1, generator=g) < 0.5, blur, x)
        loss = F.binary_cross_entropy_with_logits(judge(u8_of(x)), labels[idx].float())
        common.optimiser_step(opt, loss)  # rank 0 only: no all-reduce
    return judge.eval()


def cnn_judge(images, labels, attr, size, steps):
    """The judge of `attr` trained on these faces and labels: from $AIGN_CACHE/faces_judges (keyed by their
    content, so edited data or a changed training recipe never reuse a stale judge), else trained and kept."""
    key = hashlib.sha1(f"{attr}|{size}|{steps}|v3".encode())
    for part in (images.contiguous().numpy(), labels.to(torch.uint8).numpy(), open(__file__, "rb").read()):
        key.update(part.tobytes() if hasattr(part, "tobytes") else part)
    path = os.path.join(common.cache_dir("faces_judges"), key.hexdigest()[:16] + ".pt")
    if os.path.isfile(path):
        with torch.random.fork_rng():
            judge = CNNJudge(size)
        common.load_weights(judge, torch.load(path, map_location="cpu", weights_only=True), path, "judge")
        return judge.eval()
    t0 = time.perf_counter()
    judge = train(images, labels, size, steps)
    common.save_torch(path, judge.state_dict())
    common.log(f"trained the CNN judge of {attr} on {len(images)} held-out faces in "
               f"{time.perf_counter() - t0:.0f} s -> {path}")
    return judge
