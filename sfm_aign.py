"""sfm_aign.py: Adversarial Inverse Graphics Networks for structure from motion (Tung et al., ICCV 2017).

From consecutive video frames a DepthNet predicts per-pixel depth and a PoseNet the camera motion;
a hand-written, parameter-free camera-motion renderer (inverse warp) rebuilds the target frame from
its neighbours, and two discriminators compare predicted depth maps and camera motions with an
*unpaired* memory of ground-truth ones (other sequences). The photometric loss alone cannot fix the
metric scale; the memory does.

Results card (built-in procedural streets, 3 test sequences, 48x160, 2000 steps of 8 triplets,
seeds 0/1/2, torch 2.13.0+cpu on a 2-core AMD EPYC VM, one thread per run; tools/sfm_bench.py):
    method                     abs_rel (no scaling)  abs_rel (median-scaled)  ATE (m)   train s
    photometric only           0.887 +- 0.009        0.322 +- 0.008           0.105     273 +- 3
    supervised only, 5% pairs  0.268 +- 0.009        0.272 +- 0.004           0.059     178 +- 4
    AIGN (default)             0.347 +- 0.025        0.362 +- 0.023           0.047     322 +- 11
    AIGN + 5% pairs            0.265 +- 0.007        0.278 +- 0.002           0.062     601 +- 23
The memory recovers metric scale (AIGN unscaled is 1.08x photometric-only median-scaled);
AIGN + 5% pairs only ties supervised-only on the same 5%. Details: README.md, "sfm_aign.py".

    python3 sfm_aign.py                      # unpaired AIGN on the built-in procedural streets
    python3 sfm_aign.py --lambda-adv 0       # photometric-only baseline (scale-ambiguous)
    python3 sfm_aign.py --paired-frac 0.05   # AIGN + 5% paired frames
"""
import argparse
import glob
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import InputError


# ----------------------------------------------------------------------------------------------
# Arguments
def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, steps=2000, batch_size=8, lr=2e-4, eval_every=500)
    p.add_argument("--prior", default=None,
                   help="memory: folder of sequences with depth/ maps and/or poses.txt (unpaired); "
                        "default: DATA/memory if it exists (the built-in data has one)")
    p.add_argument("--gt-depth", default=None,
                   help="KITTI Eigen-style GT: npz with 'depth' (N,H,W) metres and 'frames' (N,) "
                        "'<sequence> <frame index>' (default: none)")
    p.add_argument("--height", type=int, default=48, help="training image height (default: 48)")
    p.add_argument("--width", type=int, default=160, help="training image width (default: 160)")
    p.add_argument("--lambda-rec", type=float, default=1.0,
                   help="weight of the photometric reconstruction through the renderer (default: 1.0)")
    p.add_argument("--lambda-smooth", type=float, default=1e-3,
                   help="weight of the edge-aware disparity smoothness (default: 0.001)")
    p.add_argument("--lambda-adv", type=float, default=0.01,
                   help="weight of the adversarial prior on depth maps and motions; 0 = photometric-only "
                        "(default: 0.01)")
    p.add_argument("--adv-on", choices=["both", "depth", "motion"], default="both",
                   help="which memory the adversarial prior uses: depth maps, motions or both (default: both)")
    p.add_argument("--adv-warmup", type=int, default=500,
                   help="ramp the adversarial weight linearly from 0 over the first N steps, so the "
                        "discriminators first meet structured depth maps (default: 500)")
    p.add_argument("--lambda-sup", type=float, default=1.0,
                   help="weight of the supervised loss on paired frames (used when --paired-frac > 0; "
                        "default: 1.0)")
    p.add_argument("--paired-frac", type=float, default=0.0,
                   help="fraction of training frames whose GT depth and motion are used (default: 0)")
    p.add_argument("--gan", default="bce", choices=["bce", "lsgan", "wgan-gp"],
                   help="adversarial loss: non-saturating bce (the paper), lsgan or wgan-gp (default: bce)")
    p.add_argument("--lr-d", type=float, default=None, help="discriminator learning rate (default: --lr)")
    p.add_argument("--min-depth", type=float, default=0.5, help="smallest predictable depth, m (default: 0.5)")
    p.add_argument("--max-depth", type=float, default=100.0, help="largest predictable depth, m (default: 100)")
    p.add_argument("--eval-cap", type=float, default=80.0,
                   help="depth evaluation range 0.001..CAP metres, as on KITTI (default: 80)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Data. Every source becomes a list of sequences: dict(name, images (N,3,H,W) uint8 at the training
# size, K (3,3) rescaled to that size, poses (N,4,4) camera-to-world or None, depth {frame: (h,w)}).
IMG_EXT = (".png", ".jpg", ".jpeg")


def read_image(path):
    import imageio.v3 as iio
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise InputError(f"{path}: cannot be read as an image ({type(e).__name__})") from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4) or img.dtype != np.uint8:
        raise InputError(f"{path}: expected an 8-bit grey/RGB/RGBA image, found shape {img.shape} {img.dtype}")
    return img[..., :3]


def read_numbers(path, what):
    try:
        with open(path) as f:
            return [[float(x) for x in line.split()] for line in f if line.strip()]
    except OSError:
        raise InputError(f"{path}: no such file (expected {what})") from None
    except ValueError:
        raise InputError(f"{path}: expected {what}, found a non-numeric entry") from None


def read_intrinsics(path):
    """intrinsics.txt: 'fx fy cx cy' on one line, or a 3x3 K (9 numbers) -> (3,3) float64."""
    vals = sum(read_numbers(path, "'fx fy cx cy' or a 3x3 K"), [])
    if len(vals) == 4:
        fx, fy, cx, cy = vals
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    if len(vals) == 9:
        return np.array(vals).reshape(3, 3)
    raise InputError(f"{path}: expected 4 numbers (fx fy cx cy) or 9 (a 3x3 K), found {len(vals)}")


def read_poses(path, n=None):
    """KITTI odometry format: one line per frame, 12 numbers, row-major 3x4 camera-to-world."""
    rows = read_numbers(path, "KITTI poses (12 numbers a line, camera-to-world 3x4)")
    for i, r in enumerate(rows):
        if len(r) != 12:
            raise InputError(f"{path}: line {i + 1}: expected 12 numbers (3x4 camera-to-world), found {len(r)}")
    if n is not None and len(rows) != n:
        raise InputError(f"{path}: expected {n} lines (one per frame), found {len(rows)}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3] = np.array(rows).reshape(-1, 3, 4)
    return poses


def read_depth(path, hw):
    """depth/<frame>.npy (float metres, 0 = invalid) or a 16-bit PNG in millimetres."""
    import imageio.v3 as iio
    try:
        d = np.load(path, allow_pickle=False) if path.endswith(".npy") else np.asarray(iio.imread(path))
    except Exception as e:
        raise InputError(f"{path}: cannot be read as a depth map ({type(e).__name__})") from None
    if path.endswith(".png"):
        if d.dtype != np.uint16:
            raise InputError(f"{path}: expected a 16-bit PNG of millimetres, found {d.dtype}")
        d = d / 1000.0
    if d.shape != tuple(hw):
        raise InputError(f"{path}: expected a depth map of the image size {tuple(hw)}, found {d.shape}")
    return d.astype(np.float32)


def rescale_K(K, sx, sy):
    """Intrinsics for an image resized by (sx, sy), pixel centres at integer coordinates:
    u' = (u + 0.5) * sx - 0.5, so fx' = fx * sx and cx' = (cx + 0.5) * sx - 0.5."""
    K = np.array(K, dtype=np.float64)
    K[0, 0], K[0, 1], K[0, 2] = K[0, 0] * sx, K[0, 1] * sx, (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    return K


def resize(x, hw, mode):
    """(N,C,h,w) float -> (N,C,H,W); area-averaging when shrinking keeps the frames anti-aliased."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if mode == "image":
        shrink = x.shape[-2] >= hw[0] and x.shape[-1] >= hw[1]
        return F.interpolate(x, size=hw, mode="area") if shrink else \
            F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=hw, mode="nearest")  # depth: never mix valid and invalid pixels


def make_sequence(name, image_paths, K, poses_path, depth_paths, hw):
    """Read one sequence, check it, resize it to the training size hw and rescale K with it."""
    if len(image_paths) < 3:
        raise InputError(f"{name}: expected at least 3 frames, found {len(image_paths)}")
    imgs = [read_image(p) for p in image_paths]
    size = imgs[0].shape[:2]
    for p, im in zip(image_paths, imgs):
        if im.shape[:2] != size:
            raise InputError(f"{p}: expected the sequence's image size {size} (as {image_paths[0]}), "
                             f"found {im.shape[:2]}")
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()  # (N, 3, h, w)
    images = resize(x, hw, "image").round().clamp(0, 255).to(torch.uint8)
    K = rescale_K(K, hw[1] / size[1], hw[0] / size[0])
    poses = read_poses(poses_path, len(image_paths)) if poses_path and os.path.exists(poses_path) else None
    depth = {i: read_depth(p, size) for i, p in (depth_paths or {}).items()}
    return dict(name=name, images=images, K=K, poses=poses, depth=depth,
                frames=[os.path.splitext(os.path.basename(p))[0] for p in image_paths])


def list_images(folder):
    return sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMG_EXT))


def load_generic_seq(seq_dir, hw):
    """DIR/<seq>/images/*.png|jpg, intrinsics.txt, optional poses.txt and depth/<frame>.npy|png."""
    paths = list_images(os.path.join(seq_dir, "images"))
    intr = os.path.join(seq_dir, "intrinsics.txt")
    if not os.path.isfile(intr):
        raise InputError(f"{intr}: no such file (expected 'fx fy cx cy' or a 3x3 K at the image size)")
    depth = {}
    for i, p in enumerate(paths):
        stem = os.path.splitext(os.path.basename(p))[0]
        for ext in (".npy", ".png"):
            if os.path.isfile(os.path.join(seq_dir, "depth", stem + ext)):
                depth[i] = os.path.join(seq_dir, "depth", stem + ext)
                break
    return make_sequence(os.path.basename(seq_dir.rstrip("/")), paths, read_intrinsics(intr),
                         os.path.join(seq_dir, "poses.txt"), depth, hw)


def kitti_calib(path, key):
    """A 3x4 projection matrix line ('P_rect_02:' in calib_cam_to_cam.txt, 'P2:' in calib.txt) -> K."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    vals = [float(v) for v in line.split()[1:]]
                    if len(vals) == 12:
                        return np.array(vals).reshape(3, 4)[:, :3]
    except (OSError, ValueError):
        pass
    raise InputError(f"{path}: expected a line '{key}: <12 numbers>' (KITTI calibration)")


def load_sequences(root, hw):
    """Detect the layout of root: KITTI odometry, KITTI raw, or generic sequence folders."""
    if not os.path.isdir(root):
        raise InputError(f"{root}: no such folder (expected a dataset folder, see README)")
    if os.path.isdir(os.path.join(root, "sequences")):  # KITTI odometry
        seqs = []
        for d in sorted(glob.glob(os.path.join(root, "sequences", "*"))):
            nm = os.path.basename(d)
            K = kitti_calib(os.path.join(d, "calib.txt"), "P2")
            seqs.append(make_sequence(nm, list_images(os.path.join(d, "image_2")), K,
                                      os.path.join(root, "poses", nm + ".txt"), {}, hw))
        return seqs
    calibs = sorted(glob.glob(os.path.join(root, "*", "calib_cam_to_cam.txt")))
    if calibs:  # KITTI raw: <date>/<date>_drive_XXXX_sync/image_02/data/*.png
        seqs = []
        for calib in calibs:
            K = kitti_calib(calib, "P_rect_02")
            for d in sorted(glob.glob(os.path.join(os.path.dirname(calib), "*_sync"))):
                seqs.append(make_sequence(os.path.basename(d), list_images(os.path.join(d, "image_02", "data")),
                                          K, os.path.join(d, "poses.txt"), {}, hw))
        if not seqs:
            raise InputError(f"{root}: found {calibs[0]} but no <date>_drive_XXXX_sync/image_02/data folders")
        return seqs
    dirs = sorted(d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(os.path.join(d, "images")))
    if not dirs:
        raise InputError(f"{root}: expected sequence folders <seq>/images/*.png with <seq>/intrinsics.txt, "
                         "a KITTI raw root (<date>/calib_cam_to_cam.txt) or KITTI odometry (sequences/), "
                         "found none")
    return [load_generic_seq(d, hw) for d in dirs]


def attach_gt_depth(seqs, path):
    """Eigen-style GT: depth maps for listed frames '<sequence> <frame index>'."""
    z = common.load_npz(path, required=("depth", "frames"), what="'depth' (N,H,W) and 'frames' (N,)")
    by_name = {s["name"]: s for s in seqs}
    if len(z["frames"]) != len(z["depth"]):
        raise InputError(f"{path}: 'frames' has {len(z['frames'])} entries, 'depth' {len(z['depth'])}")
    for entry, d in zip(z["frames"], z["depth"]):
        parts = str(entry).split()
        if len(parts) != 2 or parts[0] not in by_name or not parts[1].isdigit() \
                or int(parts[1]) >= len(by_name[parts[0]]["images"]):
            raise InputError(f"{path}: frame entry {str(entry)!r}: expected '<sequence> <frame index>' of a "
                             f"loaded sequence ({sorted(by_name)[:5]}...)")
        by_name[parts[0]]["depth"][int(parts[1])] = d.astype(np.float32)


def load_memory(root, hw, max_depth):
    """The unpaired memory: depth maps (log-depth at the training size, invalid -> max depth) and
    6-DoF motions between neighbouring frames, from sequences not used for training."""
    depths, motions = [], []
    dirs = sorted(d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(d))
    for d in dirs:
        files = sorted(glob.glob(os.path.join(d, "depth", "*.npy")) + glob.glob(os.path.join(d, "depth", "*.png")))
        for f in files:
            import imageio.v3 as iio
            shape = np.load(f, mmap_mode="r").shape if f.endswith(".npy") else iio.improps(f).shape[:2]
            depths.append(resize(torch.from_numpy(read_depth(f, shape))[None, None], hw, "depth")[0])
        if os.path.isfile(os.path.join(d, "poses.txt")):
            P = torch.from_numpy(read_poses(os.path.join(d, "poses.txt")))
            T = torch.stack([torch.linalg.inv(P[:-2]) @ P[1:-1], torch.linalg.inv(P[2:]) @ P[1:-1]], 1)
            motions.append(matrix_to_pose6(T).flatten(1))  # (N-2, 12): t -> t-1 and t -> t+1
    if not depths and not motions:
        raise InputError(f"{root}: expected memory sequences <seq>/depth/*.npy|png and/or <seq>/poses.txt, "
                         "found none")
    depth = torch.stack(depths).float() if depths else None
    if depth is not None:
        depth = torch.where(depth > 0, depth, torch.full_like(depth, max_depth)).clamp(max=max_depth)
    return depth, (torch.cat(motions).float() if motions else None)  # (M,1,H,W), (Q,12)


def builtin_K(h, w):
    return np.array([[0.58 * w, 0, (w - 1) / 2], [0, 0.58 * w, (h - 1) / 2], [0, 0, 1]])


def load_data(args, dist_state):
    """(train, test, memory_depth, memory_motion) from --data/--prior, or the built-in streets.
    A --data folder with train/ and test/ subfolders is split by them (and memory/ is the default
    prior); otherwise its sequences serve for both training and evaluation."""
    hw = (args.height, args.width)
    if args.data is None:  # the generator is data, not the method: it lives in tools/
        from tools.sfm_builtin import build_builtin
    root = args.data or build_builtin(dist_state)
    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test")):
        train, test = load_sequences(os.path.join(root, "train"), hw), load_sequences(os.path.join(root, "test"), hw)
    else:
        train = test = load_sequences(root, hw)
    if args.gt_depth:
        attach_gt_depth(test, args.gt_depth)
    prior = args.prior or (os.path.join(root, "memory") if os.path.isdir(os.path.join(root, "memory")) else None)
    mem_depth, mem_motion = load_memory(prior, hw, args.max_depth) if prior else (None, None)
    return train, test, mem_depth, mem_motion


# ----------------------------------------------------------------------------------------------
# Networks, sized to train on a CPU. No batch norm: nothing to synchronise across processes.
def conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ELU())


class DepthNet(nn.Module):
    """U-Net: frame (B,3,H,W) -> depth (B,1,H,W) from a bounded disparity (a sigmoid between
    1/max_depth and 1/min_depth): always positive and finite."""

    def __init__(self, min_depth, max_depth, ch=(16, 32, 64, 96, 128)):
        super().__init__()
        self.min_disp, self.max_disp = 1.0 / max_depth, 1.0 / min_depth
        self.enc = nn.ModuleList([nn.Sequential(conv(cin, c, 2), conv(c, c)) for cin, c in zip((3,) + ch[:-1], ch)])
        self.dec = nn.ModuleList([nn.Sequential(conv(ch[i + 1] + ch[i], ch[i]), conv(ch[i], ch[i]))
                                  for i in reversed(range(len(ch) - 1))])
        self.head = nn.Sequential(conv(ch[0], 16), nn.Conv2d(16, 1, 3, 1, 1))

    def forward(self, img):  # (B, 3, H, W) in [0, 1]
        x, feats = (img - 0.45) / 0.225, []
        for layer in self.enc:
            x = layer(x)  # halves the size
            feats.append(x)
        for layer, skip in zip(self.dec, feats[-2::-1]):
            x = layer(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        x = self.head(F.interpolate(x, size=img.shape[-2:], mode="nearest"))
        disp = self.min_disp + (self.max_disp - self.min_disp) * torch.sigmoid(x)
        return 1.0 / disp  # (B, 1, H, W) metres


class PoseNet(nn.Module):
    """Frames t-1, t, t+1 stacked on channels (B,9,H,W) -> the two 6-DoF motions target->source
    (B,2,6): t->t-1 and t->t+1, axis-angle rotation (rad) and translation (m). As in SfMLearner the
    order of the sources is in the input, so "which way is forward" is learnable; small output
    scales start near the identity."""

    def __init__(self, ch=(16, 32, 64, 128, 128)):
        super().__init__()
        self.net = nn.Sequential(*[conv(cin, c, 2) for cin, c in zip((9,) + ch[:-1], ch)], nn.Conv2d(ch[-1], 12, 1))
        self.register_buffer("scale", torch.tensor([0.01, 0.01, 0.01, 0.1, 0.1, 0.1]), persistent=False)

    def forward(self, prev, target, nxt):  # (B, 3, H, W) each
        x = torch.cat([prev, target, nxt], 1)
        return self.net((x - 0.45) / 0.225).mean((2, 3)).view(-1, 2, 6) * self.scale  # (B, 2, 6)


class PatchD(nn.Module):
    """Depth-map discriminator: log-depth (B,1,H,W) -> a grid of real/fake logits (B,1,h,w)."""

    def __init__(self, ch=(16, 32, 64)):
        super().__init__()
        layers, cin = [], 1
        for c in ch:
            layers += [nn.Conv2d(cin, c, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = c
        self.net = nn.Sequential(*layers, nn.Conv2d(cin, 1, 3, 1, 1))

    def forward(self, depth):  # (B, 1, H, W) metres
        return self.net(torch.log(depth) - math.log(10.0))


class MotionD(nn.Module):
    """Camera-motion discriminator: the two motions of a triplet (B,12) (t->t-1, t->t+1), standardised
    with the memory's statistics."""

    def __init__(self, mean, std, width=128):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(nn.Linear(12, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def forward(self, motions):  # (B, 12)
        return self.net((motions - self.mean) / self.std)


# ----------------------------------------------------------------------------------------------
# The renderer: camera motion as an inverse warp (parameter-free, differentiable, device-agnostic).
def axis_angle_to_matrix(r):
    """Rodrigues: (..., 3) -> (..., 3, 3); a Taylor form near 0 keeps gradients finite."""
    th2 = (r * r).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = th2 < 1e-8
    th = torch.sqrt(torch.where(small, torch.ones_like(th2), th2))
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / torch.where(small, torch.ones_like(th2), th2))
    x, y, z = r.unbind(-1)
    o = torch.zeros_like(x)
    Kx = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*r.shape[:-1], 3, 3)
    return torch.eye(3, dtype=r.dtype, device=r.device) + a * Kx + b * (Kx @ Kx)


def matrix_to_pose6(T):
    """(..., 4, 4) rigid transforms -> (..., 6) axis-angle + translation (rotations well below pi)."""
    R = T[..., :3, :3]
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    th = torch.acos(cos)[..., None]
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    fac = torch.where(th < 1e-6, torch.full_like(th, 0.5), th / (2 * torch.sin(th).clamp(min=1e-12)))
    return torch.cat([vee * fac, T[..., :3, 3]], -1)


def pose6_to_matrix(p):
    """(..., 6) -> (..., 4, 4)."""
    T = torch.zeros(*p.shape[:-1], 4, 4, dtype=p.dtype, device=p.device)
    T[..., :3, :3] = axis_angle_to_matrix(p[..., :3])
    T[..., :3, 3] = p[..., 3:]
    T[..., 3, 3] = 1
    return T


def inverse_warp(source, depth, pose6, K):
    """Rebuild the target frame from a source frame.
    source (B,C,H,W); depth (B,1,H,W) of the target; pose6 (B,6) target->source; K (B,3,3) at this size.
    Camera frame: x right, y down, z forward; pixel centres at integer (u, v).
      X = d K^-1 [u v 1]^T  ->  X' = R X + t  ->  (u', v') = K X' / z'  ->  bilinear sample of source.
    Returns the warped image (B,C,H,W) and the validity mask (B,1,H,W): inside the source, z' > 0."""
    B, _, H, W = source.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=depth.dtype, device=depth.device),
                          torch.arange(W, dtype=depth.dtype, device=depth.device), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)]).reshape(1, 3, H * W)  # (1, 3, HW)
    cam = (torch.linalg.inv(K) @ pix) * depth.reshape(B, 1, H * W)  # (B, 3, HW) back-projection
    T = pose6_to_matrix(pose6)
    cam_s = T[:, :3, :3] @ cam + T[:, :3, 3:]  # (B, 3, HW) in the source camera
    proj = K @ cam_s
    z = proj[:, 2:3]
    uv = proj[:, :2] / z.clamp(min=1e-6)  # (B, 2, HW) source pixel coordinates
    # grid_sample with align_corners=True maps -1/+1 to the centres of the first/last pixels,
    # which is exactly the integer-centre convention of K above.
    grid = torch.stack([2 * uv[:, 0] / (W - 1) - 1, 2 * uv[:, 1] / (H - 1) - 1], -1).reshape(B, H, W, 2)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    valid = (z > 1e-6) & (uv[:, :1] >= 0) & (uv[:, :1] <= W - 1) & (uv[:, 1:] >= 0) & (uv[:, 1:] <= H - 1)
    return warped, valid.reshape(B, 1, H, W).to(source.dtype)


# ----------------------------------------------------------------------------------------------
# Losses
def ssim_dissimilarity(x, y):
    """(1 - SSIM) / 2 on 3x3 windows, per pixel (B,C,H,W)."""
    pool = lambda t: F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), 3, 1)
    mx, my = pool(x), pool(y)
    sx, sy, sxy = pool(x * x) - mx ** 2, pool(y * y) - my ** 2, pool(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sx + sy + c2))
    return ((1 - ssim) / 2).clamp(0, 1)


def photometric_error(pred, target):
    """The renderer's reconstruction error per pixel (B,1,H,W): 0.85 (1-SSIM)/2 + 0.15 L1."""
    return 0.85 * ssim_dissimilarity(pred, target).mean(1, keepdim=True) + \
        0.15 * (pred - target).abs().mean(1, keepdim=True)


def smoothness(depth, img):
    """Edge-aware smoothness of mean-normalised disparity: flat where the image is flat."""
    disp = 1 / depth
    disp = disp / disp.mean((2, 3), keepdim=True)
    dx, dy = (disp[..., :, 1:] - disp[..., :, :-1]).abs(), (disp[..., 1:, :] - disp[..., :-1, :]).abs()
    ix = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(1, keepdim=True)
    iy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()


def d_loss(D, real, fake, gan):
    """Discriminator: memory samples are real, predictions fake. bce = -log D(y) - log(1 - D(G(x)))."""
    logits = D(torch.cat([real, fake]))
    lr, lf = logits[:len(real)], logits[len(real):]
    if gan == "bce":
        return F.softplus(-lr).mean() + F.softplus(lf).mean()
    if gan == "lsgan":
        return ((lr - 1) ** 2).mean() + (lf ** 2).mean()
    a = torch.rand(len(real), *[1] * (real.dim() - 1), dtype=real.dtype, device=real.device)
    mix = (a * real + (1 - a) * fake).requires_grad_(True)
    g, = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)
    return lf.mean() - lr.mean() + 10 * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()  # WGAN-GP


def g_adv_loss(D, fake, gan):
    """Generator's adversarial term: non-saturating -log D(G(x)) (the paper), or lsgan / wgan."""
    logits = D(fake)
    if gan == "bce":
        return F.softplus(-logits).mean()
    if gan == "lsgan":
        return ((logits - 1) ** 2).mean()
    return -logits.mean()


# ----------------------------------------------------------------------------------------------
# Evaluation: Eigen depth metrics (with and without median scaling), ATE on 5-frame snippets.
def depth_metrics(pred, gt):
    """Eigen et al. metrics over valid pixels; pred, gt 1-D tensors of metres."""
    thresh = torch.maximum(gt / pred, pred / gt)
    return {"abs_rel": ((gt - pred).abs() / gt).mean().item(), "sq_rel": ((gt - pred) ** 2 / gt).mean().item(),
            "rmse": ((gt - pred) ** 2).mean().sqrt().item(),
            "rmse_log": ((gt.log() - pred.log()) ** 2).mean().sqrt().item(),
            "a1": (thresh < 1.25).float().mean().item(), "a2": (thresh < 1.25 ** 2).float().mean().item(),
            "a3": (thresh < 1.25 ** 3).float().mean().item()}


def ate_snippet(gt_xyz, pred_xyz):
    """SfMLearner's ATE: align the first positions, fit one scale by least squares, then
    sqrt(sum ||error||^2) / N (not an RMSE; the form every peer reports). (N,3) each."""
    pred = pred_xyz + (gt_xyz[0] - pred_xyz[0])
    scale = (gt_xyz * pred).sum() / (pred ** 2).sum().clamp(min=1e-12)
    return ((pred * scale - gt_xyz) ** 2).sum().sqrt().item() / len(gt_xyz)


@torch.no_grad()
def predict_sequence(depth_net, pose_net, images, device, chunk=32):
    """images (N>=3,3,H,W) uint8 -> depth (N,1,H,W) and camera-to-first-frame poses (N,4,4), chained
    from the motions i -> i+1 of the triplets centred at i = 1..N-2 (and 0 -> 1 = inverse of 1 -> 0)."""
    depth, motion = [], []
    for i in range(0, len(images), chunk):
        x = images[max(i - 1, 0):i + chunk + 1].to(device).float() / 255
        depth.append(depth_net(x[int(i > 0):][:chunk]).cpu())
        if len(x) >= 3:
            motion.append(pose_net(x[:-2], x[1:-1], x[2:]).double().cpu())  # (n, 2, 6)
    T = pose6_to_matrix(torch.cat(motion))  # (N-2, 2, 4, 4)
    step = torch.cat([torch.linalg.inv(T[:1, 0]), T[:, 1]])  # (N-1, 4, 4) motions i -> i+1
    rel = torch.linalg.inv(step)  # camera i+1 in the frame of camera i
    poses = [torch.eye(4, dtype=torch.float64)]
    for r in rel:
        poses.append(poses[-1] @ r)
    return torch.cat(depth), torch.stack(poses)


def evaluate(depth_net, pose_net, seqs, args, device):
    """Metrics on every frame with GT depth and every 5-frame snippet with GT poses."""
    was_training = depth_net.training
    depth_net.eval(), pose_net.eval()
    rows, rows_med, ratios, ates, ates_metric = [], [], [], [], []
    for s in seqs:
        depth, poses = predict_sequence(depth_net, pose_net, s["images"], device)
        for i, gt in sorted(s["depth"].items()):
            gt = torch.from_numpy(gt)
            pred = F.interpolate(depth[i:i + 1], size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
            m = (gt > 1e-3) & (gt < args.eval_cap)
            if m.sum() == 0:
                continue
            p, g = pred[m], gt[m]
            ratio = (g.median() / p.median()).item()
            rows.append(depth_metrics(p.clamp(1e-3, args.eval_cap), g))
            rows_med.append(depth_metrics((p * ratio).clamp(1e-3, args.eval_cap), g))
            ratios.append(ratio)
        if s["poses"] is not None:
            gt_P = torch.from_numpy(s["poses"])
            for st in range(len(gt_P) - 4):
                gt_xyz = (torch.linalg.inv(gt_P[st]) @ gt_P[st:st + 5])[:, :3, 3]
                pred_xyz = (torch.linalg.inv(poses[st]) @ poses[st:st + 5])[:, :3, 3]
                ates.append(ate_snippet(gt_xyz, pred_xyz))
                ates_metric.append(((pred_xyz - gt_xyz) ** 2).sum().sqrt().item() / 5)
    depth_net.train(was_training), pose_net.train(was_training)
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} if rs else None
    return {"depth": mean(rows), "depth_median_scaled": mean(rows_med),
            "median_scale": float(np.median(ratios)) if ratios else None,
            "ate": float(np.mean(ates)) if ates else None, "ate_std": float(np.std(ates)) if ates else None,
            "ate_no_scale": float(np.mean(ates_metric)) if ates else None,
            "depth_frames": len(rows), "ate_snippets": len(ates)}


# ----------------------------------------------------------------------------------------------
# Figures, drawn with numpy (no plotting library).
CMAP = np.array([[0.0, 0.0, 0.02], [0.23, 0.06, 0.44], [0.55, 0.16, 0.5], [0.87, 0.29, 0.4],
                 [0.99, 0.6, 0.36], [0.99, 0.99, 0.75]])  # dark (far) -> bright (near), magma-like


def colorize(v):
    """(H,W) values in [0,1] -> (H,W,3) colours by piecewise-linear interpolation of CMAP."""
    v = np.clip(np.asarray(v, dtype=np.float64), 0, 1) * (len(CMAP) - 1)
    i = np.minimum(np.floor(v).astype(int), len(CMAP) - 2)
    f = (v - i)[..., None]
    return CMAP[i] * (1 - f) + CMAP[i + 1] * f


def depth_color(d, args):
    """Log-depth colours on a fixed range (comparable across steps and runs); 0 = invalid -> black."""
    d = np.asarray(d, dtype=np.float64)
    v = np.log(args.max_depth / np.maximum(d, 1e-3)) / np.log(args.max_depth / args.min_depth)
    return np.where(d[..., None] > 0, colorize(v), 0.0)


@torch.no_grad()
def depth_figure(path, depth_net, pose_net, seq, args, device, n=4):
    """Rows of fixed test frames: frame | predicted depth | GT depth | warped source | photometric error."""
    was_training = depth_net.training
    depth_net.eval(), pose_net.eval()
    rows, hw = [], (args.height, args.width)
    for i in np.linspace(1, len(seq["images"]) - 2, n).round().astype(int):
        prev, tgt, src = (seq["images"][j:j + 1].to(device).float() / 255 for j in (i - 1, i, i + 1))
        depth = depth_net(tgt)
        K = torch.as_tensor(seq["K"], dtype=torch.float32, device=device)[None]
        warped, valid = inverse_warp(src, depth, pose_net(prev, tgt, src)[:, 1], K)
        err = (photometric_error(warped, tgt) * valid)[0, 0].cpu().numpy()
        gt = seq["depth"].get(i)
        gt = resize(torch.from_numpy(gt)[None, None], hw, "depth")[0, 0].numpy() if gt is not None else np.zeros(hw)
        rows.append([tgt[0].cpu(), depth_color(depth[0, 0].cpu().numpy(), args), depth_color(gt, args),
                     (warped * valid)[0].cpu(), colorize(err / 0.5)])
    depth_net.train(was_training), pose_net.train(was_training)
    common.write_png(path, common.image_grid(rows))


def trajectory_figure(path, gt, pred, size=320, pad=16):
    """Top view (x right, z up) of camera positions: GT in black, prediction (no scale fit) in red."""
    pts = np.concatenate([gt, pred])[:, [0, 2]]
    centre, span = (pts.min(0) + pts.max(0)) / 2, max(np.ptp(pts, 0).max(), 1e-6)
    img = np.ones((size, size, 3))
    for xyz, color in ((gt, (0, 0, 0)), (pred, (0.85, 0.1, 0.1))):
        q = (xyz[:, [0, 2]] - centre) / span * (size - 2 * pad) + size / 2  # one scale for x and z
        for a, b in zip(q[:-1], q[1:]):
            for t in np.linspace(0, 1, int(np.abs(b - a).max()) * 2 + 2):
                x, y = (a + t * (b - a)).round().astype(int)
                img[size - 1 - y - 1:size - y + 1, x - 1:x + 2] = color  # 3x3 dots
    common.write_png(path, img)


def write_figures(run_dir, depth_net, pose_net, test, args, device):
    seq = next((s for s in test if s["depth"]), test[0])
    depth_figure(os.path.join(run_dir, "depth_grid.png"), depth_net, pose_net, seq, args, device)
    seq = next((s for s in test if s["poses"] is not None), None)
    if seq is not None:
        _, poses = predict_sequence(depth_net, pose_net, seq["images"], device)
        gt = np.linalg.inv(seq["poses"][0]) @ seq["poses"]
        trajectory_figure(os.path.join(run_dir, "trajectory.png"), gt[:, :3, 3], poses[:, :3, 3].numpy())


# ----------------------------------------------------------------------------------------------
# Training
def training_set(train, args, device):
    """Triplets (target t, sources t-1 and t+1) of every training sequence, and the paired subset:
    evenly spaced triplets whose GT depth and motions are used by the supervised loss."""
    images = torch.cat([s["images"] for s in train]).to(device)  # (F, 3, H, W) uint8
    trip, K, starts = [], [], np.cumsum([0] + [len(s["images"]) for s in train])
    for s, o in zip(train, starts):
        for t in range(1, len(s["images"]) - 1):
            trip.append([o + t, o + t - 1, o + t + 1])
            K.append(s["K"])
    data = dict(images=images, trip=torch.tensor(trip, device=device),
                K=torch.tensor(np.array(K), dtype=torch.float32, device=device))
    n_paired = int(round(args.paired_frac * len(trip))) if args.lambda_sup > 0 else 0
    if args.paired_frac > 0 and args.lambda_sup > 0:
        n_paired = max(1, n_paired)
        idx = np.linspace(0, len(trip) - 1, n_paired).round().astype(int)
        owner = np.searchsorted(starts, np.array(trip)[idx, 0], side="right") - 1
        gt_depth, gt_pose = [], []
        for j, k in zip(idx, owner):
            s, t = train[k], trip[j][0] - starts[k]
            if t not in s["depth"] or s["poses"] is None:
                raise InputError(f"--paired-frac {args.paired_frac}: sequence {s['name']} frame {s['frames'][t]} "
                                 "has no GT depth map or poses.txt; paired frames need both")
            gt_depth.append(resize(torch.from_numpy(s["depth"][t])[None, None], (args.height, args.width), "depth")[0])
            P = torch.from_numpy(s["poses"])
            gt_pose.append(matrix_to_pose6(torch.linalg.inv(P[[t - 1, t + 1]]) @ P[t]))  # target -> sources
        data.update(paired=torch.tensor(idx, device=device), gt_depth=torch.stack(gt_depth).to(device),
                    gt_pose=torch.stack(gt_pose).float().to(device))
    return data


def sample_batch(data, mem_depth, mem_motion, gen, args, d, use_unpaired, use_adv):
    """Draw the *global* batch from one generator seeded alike on every rank; keep this rank's slice
    (so a run is identical at any world size and resumes exactly)."""
    B, sl = args.batch_size, slice(d.rank * args.batch_size, (d.rank + 1) * args.batch_size)
    draw = lambda n: torch.randint(n, (B * d.world,), generator=gen)[sl]
    ids, paired = [], 0
    if use_unpaired:
        ids.append(draw(len(data["trip"])).to(data["trip"].device))
    if "paired" in data:
        p = draw(len(data["paired"])).to(data["trip"].device)
        ids.append(data["paired"][p])
        paired = dict(depth=data["gt_depth"][p], pose=data["gt_pose"][p])
    trip = data["trip"][torch.cat(ids)]
    frames = data["images"][trip].float() / 255  # (b, 3, 3, H, W): target, source t-1, source t+1
    batch = dict(target=frames[:, 0], sources=frames[:, 1:], K=data["K"][torch.cat(ids)], paired=paired)
    if use_adv:
        batch["mem_depth"] = mem_depth[draw(len(mem_depth))].to(frames.device) if mem_depth is not None else None
        batch["mem_motion"] = mem_motion[draw(len(mem_motion))].to(frames.device) if mem_motion is not None else None
    return batch


def train_step(nets, opts, batch, args, d, step):
    """One generator update (reconstruction + adversarial + supervised) and one discriminator update."""
    depth_net, pose_net, Dd, Dm = nets
    tgt, srcs, K = batch["target"], batch["sources"], batch["K"]  # (b,3,H,W), (b,2,3,H,W), (b,3,3)
    b = len(tgt)
    depth = depth_net(tgt)  # (b, 1, H, W)
    pose = pose_net(srcs[:, 0], tgt, srcs[:, 1])  # (b, 2, 6): target -> t-1, t -> t+1
    logs, loss = {}, 0.0
    n_un = b - (len(batch["paired"]["depth"]) if batch["paired"] else 0)  # unpaired samples come first
    if args.lambda_rec > 0:
        # Renderer: warp both sources into the target with the predicted depth and motion; per pixel
        # keep the better source (occlusions, Monodepth2) and ignore pixels that no source sees.
        warped, valid = inverse_warp(srcs.flatten(0, 1), depth.repeat_interleave(2, 0), pose.flatten(0, 1),
                                     K.repeat_interleave(2, 0))
        err = photometric_error(warped, tgt.repeat_interleave(2, 0))  # (2b, 1, H, W)
        err = torch.where(valid > 0, err, torch.full_like(err, 1e3)).view(b, 2, *err.shape[-2:]).min(1).values
        seen = err < 1e3
        logs["rec"] = (err * seen).sum() / seen.sum().clamp(min=1)
        logs["smooth"] = smoothness(depth, tgt)
        loss = loss + args.lambda_rec * logs["rec"] + args.lambda_smooth * logs["smooth"]
    if "mem_depth" in batch:
        # Adversarial prior: predicted depth maps and motions should look like the memory's.
        adv = 0.0
        if batch["mem_depth"] is not None:
            adv = adv + g_adv_loss(Dd, depth[:n_un], args.gan)
        if batch["mem_motion"] is not None:
            adv = adv + g_adv_loss(Dm, pose[:n_un].flatten(1), args.gan)
        logs["adv"] = adv
        loss = loss + args.lambda_adv * min(1.0, (step + 1) / max(args.adv_warmup, 1)) * adv
    if batch["paired"]:
        # Supervised on the paired subset: log-depth L1 on valid GT pixels + L1 on the 6-DoF motion.
        gt_d, pd = batch["paired"]["depth"], depth[n_un:]
        v = gt_d > 0
        logs["sup"] = (pd[v].log() - gt_d[v].log()).abs().mean() + (pose[n_un:] - batch["paired"]["pose"]).abs().mean()
        loss = loss + args.lambda_sup * logs["sup"]
    opts[0].zero_grad(set_to_none=True)
    loss.backward()
    d.average_grads(depth_net, pose_net)  # DDP's all-reduce by hand (see common.Dist)
    opts[0].step()
    if "mem_depth" in batch:
        opts[1].zero_grad(set_to_none=True)
        ld = 0.0
        if batch["mem_depth"] is not None:
            ld = ld + d_loss(Dd, batch["mem_depth"], depth[:n_un].detach(), args.gan)
        if batch["mem_motion"] is not None:
            ld = ld + d_loss(Dm, batch["mem_motion"], pose[:n_un].detach().flatten(1), args.gan)
        ld.backward()
        d.average_grads(Dd, Dm)
        opts[1].step()
        logs["d"] = ld
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in logs.items()}


def bench(nets, opts, data, mem, gen, args, d, run_dir):
    """Renderer throughput (forward + backward) beside a plain copy of the same tensors; training
    frames/s and the fraction of the measured matmul peak that a training step reaches."""
    dev, B, (H, W) = d.device, 2 * args.batch_size, (args.height, args.width)
    src = torch.rand(B, 3, H, W, device=dev)
    depth = (5 + 10 * torch.rand(B, 1, H, W, device=dev)).requires_grad_(True)
    pose = (0.05 * torch.randn(B, 6, device=dev)).requires_grad_(True)
    K = torch.tensor(builtin_K(H, W), dtype=torch.float32, device=dev).expand(B, 3, 3)

    def timed(fn, reps=20):
        fn()
        common.sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        common.sync(dev)
        return (time.perf_counter() - t0) / reps

    t_warp = timed(lambda: inverse_warp(src, depth, pose, K)[0].sum().backward())
    t_copy = timed(lambda: (src.clone(), depth.detach().clone()))
    use_unpaired, use_adv = args.lambda_rec > 0 or args.lambda_adv > 0, args.lambda_adv > 0
    step = lambda: train_step(nets, opts, sample_batch(data, *mem, gen, args, d, use_unpaired, use_adv), args, d,
                              args.steps)
    t_step = timed(step, reps=5)
    flops, peak = common.count_flops(step), common.matmul_peak(dev)
    frames = args.batch_size * d.world
    out = {"renderer_mpix_per_s": B * H * W / t_warp / 1e6, "renderer_ms": 1e3 * t_warp,
           "copy_ms": 1e3 * t_copy, "train_frames_per_s": frames / t_step, "step_ms": 1e3 * t_step,
           "step_gflop": flops / 1e9, "matmul_peak_gflops": peak / 1e9,
           "fraction_of_peak": flops / t_step / peak, "batch": B // 2, "size": [H, W], "device": str(dev)}
    for k, v in out.items():
        common.log(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}", d)
    if d.main:
        common.write_json(os.path.join(run_dir, "bench.json"), out)


@torch.no_grad()
def predict(args, depth_net, pose_net, d, run_dir):
    """--predict FOLDER (frames as images, or FOLDER/images/): depth maps as npy (metres, at the
    input size) + colour PNG, and the trajectory as KITTI poses (camera-to-first-frame)."""
    folder = args.predict
    paths = list_images(folder) or list_images(os.path.join(folder, "images"))
    if len(paths) < 3:
        raise InputError(f"{folder}: expected at least 3 frames (*.png|jpg, or images/*.png|jpg), found {len(paths)}")
    imgs = [read_image(p) for p in paths]
    for p, im in zip(paths, imgs):
        if im.shape != imgs[0].shape:
            raise InputError(f"{p}: expected the first frame's size {imgs[0].shape[:2]}, found {im.shape[:2]}")
    x = resize(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float(), (args.height, args.width), "image")
    depth_net.eval(), pose_net.eval()
    depth, poses = predict_sequence(depth_net, pose_net, x.round().clamp(0, 255).to(torch.uint8), d.device)
    depth = F.interpolate(depth, size=imgs[0].shape[:2], mode="bilinear", align_corners=False)
    os.makedirs(os.path.join(run_dir, "depth"), exist_ok=True)
    for p, dm in zip(paths, depth[:, 0].numpy()):
        stem = os.path.join(run_dir, "depth", os.path.splitext(os.path.basename(p))[0])
        np.save(stem + ".npy", dm.astype(np.float32))
        common.write_png(stem + ".png", depth_color(dm, args))
    np.savetxt(os.path.join(run_dir, "poses.txt"), poses[:, :3].reshape(len(poses), 12).numpy(), fmt="%.6f")
    common.log(f"wrote {len(paths)} depth maps and poses.txt to {run_dir}")


ARCH_ARGS = ("height", "width", "min_depth", "max_depth")  # a checkpoint's network follows these


def main():
    args = get_args()
    d = common.Dist(args.device)
    if (args.eval_only or args.predict) and not args.resume:
        raise InputError("--eval-only and --predict need --resume CHECKPOINT")
    if min(args.height, args.width) < 16 or args.batch_size < 1 or not 0 <= args.paired_frac <= 1:
        raise InputError("expected --height/--width >= 16, --batch-size >= 1 and 0 <= --paired-frac <= 1")
    ckpt = common.load_checkpoint(args.resume, required=("step", "depth_net", "pose_net", "args")) \
        if args.resume else None
    if ckpt:
        for k in ARCH_ARGS:
            setattr(args, k, ckpt["args"][k])
    common.seed_everything(args.seed, args.deterministic)  # same seed on every rank: identical init
    run_dir = common.make_run_dir(args, "sfm_aign", d)
    dev = d.device
    depth_net, pose_net = DepthNet(args.min_depth, args.max_depth).to(dev), PoseNet().to(dev)
    if ckpt:
        depth_net.load_state_dict(ckpt["depth_net"]), pose_net.load_state_dict(ckpt["pose_net"])
    if args.predict:
        if d.main:
            predict(args, depth_net, pose_net, d, run_dir)
        return
    train, test, mem_depth, mem_motion = load_data(args, d)
    if args.eval_only:
        if d.main:
            res = evaluate(depth_net, pose_net, test, args, dev)
            common.write_json(os.path.join(run_dir, "results.json"), {**res, "steps": ckpt["step"]})
            write_figures(run_dir, depth_net, pose_net, test, args, dev)
            common.log(summary(res, ckpt["step"]))
        return

    mem_depth = None if args.adv_on == "motion" else mem_depth  # --adv-on: keep one memory only
    mem_motion = None if args.adv_on == "depth" else mem_motion
    use_adv = args.lambda_adv > 0
    use_unpaired = args.lambda_rec > 0 or use_adv
    if use_adv and mem_depth is None and mem_motion is None:
        raise InputError("--lambda-adv > 0 needs a memory of depth maps and/or poses: pass --prior DIR "
                         "(or --lambda-adv 0 for the photometric-only baseline)")
    if not use_unpaired and not (args.paired_frac > 0 and args.lambda_sup > 0):
        raise InputError("nothing to train: --lambda-rec and --lambda-adv are 0 and there are no paired frames")
    data = training_set(train, args, dev)
    stats = mem_motion if mem_motion is not None else torch.zeros(2, 12)
    Dd, Dm = PatchD().to(dev), MotionD(stats.mean(0), stats.std(0).clamp(min=1e-3)).to(dev)
    opt_g = torch.optim.Adam([*depth_net.parameters(), *pose_net.parameters()], lr=args.lr, betas=(0.9, 0.999))
    opt_d = torch.optim.Adam([*Dd.parameters(), *Dm.parameters()], lr=args.lr_d or args.lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(args.seed)  # the data order, identical on every rank
    start, wall = 0, 0.0
    if ckpt:
        Dd.load_state_dict(ckpt["d_depth"]), Dm.load_state_dict(ckpt["d_motion"])
        opt_g.load_state_dict(ckpt["opt_g"]), opt_d.load_state_dict(ckpt["opt_d"])
        gen.set_state(ckpt["data_rng"])
        common.set_rng_state(ckpt["rng"])
        start, wall = ckpt["step"], ckpt["wall"]
    nets, opts, mem = (depth_net, pose_net, Dd, Dm), (opt_g, opt_d), (mem_depth, mem_motion)
    if args.bench:
        return bench(nets, opts, data, mem, gen, args, d, run_dir)
    common.log(f"train: {len(train)} sequences, {len(data['trip'])} triplets ({len(data.get('paired', []))} "
               f"paired); test: {len(test)} sequences; memory: "
               f"{0 if mem_depth is None else len(mem_depth)} depth maps, "
               f"{0 if mem_motion is None else len(mem_motion)} motions; {d.world} process(es) on {dev}", d)

    def checkpoint(step):
        if d.main:
            common.save_checkpoint(os.path.join(run_dir, "ckpt.pt"), {
                "depth_net": depth_net.state_dict(), "pose_net": pose_net.state_dict(),
                "d_depth": Dd.state_dict(), "d_motion": Dm.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step, "wall": wall,
                "rng": common.rng_state(), "data_rng": gen.get_state(), "args": vars(args)})
        d.barrier()

    metrics = common.MetricsLog(run_dir, start if ckpt else None, enabled=d.main)
    stop, sums, n, t0, t_session = common.StopRequest(), {}, 0, time.perf_counter(), time.perf_counter()
    step = start
    for step in common.progress(start, args.steps, d, disable=args.no_progress):
        logs = train_step(nets, opts, sample_batch(data, *mem, gen, args, d, use_unpaired, use_adv), args, d, step)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        step, n = step + 1, n + 1
        stopping = d.mean(float(stop.requested)) > 0  # every rank stops at the same step
        if step % args.eval_every == 0 or step == args.steps or stopping:
            wall += time.perf_counter() - t0  # training time only: evaluations are not counted
            record = {"step": step, **{f"loss_{k}": d.mean(v / n) for k, v in sums.items()}}
            if d.main:
                res = evaluate(depth_net, pose_net, test, args, dev)
                record.update(flatten(res))
                metrics.write(record)
                common.log(summary(res, step), d)
            checkpoint(step)
            sums, n, t0 = {}, 0, time.perf_counter()
        if stopping:
            common.log(f"stopped at step {step}; continue with --resume {os.path.join(run_dir, 'ckpt.pt')}", d)
            return
    if d.main:
        res = evaluate(depth_net, pose_net, test, args, dev)
        session = time.perf_counter() - t_session
        res.update(steps=step, wall_seconds=wall,
                   frames_per_s=(step - start) * args.batch_size * d.world / max(session, 1e-9),
                   world=d.world, device=str(dev))
        common.write_json(os.path.join(run_dir, "results.json"), res)
        write_figures(run_dir, depth_net, pose_net, test, args, dev)
        common.log(summary(res, step))
    d.barrier()


def flatten(res):
    out = {}
    for k, v in res.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in v.items()})
        elif v is not None:
            out[k] = v
    return out


def summary(res, step):
    parts = [f"step {step}"]
    for key, tag in (("depth", "abs_rel"), ("depth_median_scaled", "abs_rel(median-scaled)")):
        if res[key]:
            parts.append(f"{tag} {res[key]['abs_rel']:.3f}")
    if res["depth"]:
        parts.append(f"a1 {res['depth']['a1']:.3f} scale(gt/pred) {res['median_scale']:.2f}")
    if res["ate"] is not None:
        parts.append(f"ATE {res['ate']:.4f} ± {res['ate_std']:.4f} (no scale fit {res['ate_no_scale']:.4f})")
    return " | ".join(parts)


if __name__ == "__main__":
    common.run_main(main)
