"""sfm_aign.py: Adversarial Inverse Graphics Networks for structure from motion (Tung et al., ICCV 2017).

From frames t-1, t, t+1 a DepthNet predicts the depth of frame t and a PoseNet the camera motions; a
hand-written, parameter-free renderer (inverse warp) rebuilds frame t from its neighbours, and discriminators
compare the predicted depth maps (and motions) with an *unpaired* memory of real ones from other sequences.
Photometric loss alone cannot fix the metric scale; the memory does.

Results card (built-in procedural streets, 3 test sequences, 48x160, 2000 steps of 8 triplets, CPU, 1 thread;
abs_rel unscaled / median-scaled, prediction resized as disparity; commands, hardware: docs/sfm.md):
    seeds 0-4 (d97bd43): AIGN (default: depth memory, chosen on val/) 0.320 / 0.316, scale GT/pred 0.99, ATE
    0.056 m; photometric only 0.890 / 0.323, ATE 0.108 m: the memory recovers the metric scale; structure a
    tie inside the seed spread (+-0.020; val, seeds 0-2: 0.322 vs 0.342).
    Labels as stretches (seeds 0-2): AIGN + pairs +31 / +34 / +35 / +24% lower abs_rel than supervised only
    at 1 / 2 / 5 / 10% paired, a tie at 100% (tools/sfm_bench.py --curve).
    Speed (tools/sfm_bench.py --throughput, 1 thread, CPU time): a step 58-60% of the matmul peak; renderer
    forward + backward ~51x a copy of its inputs + outputs in cache, ~15-18x one from memory.

    python3 sfm_aign.py                      # unpaired AIGN on the built-in procedural streets
    python3 sfm_aign.py --lambda-adv 0       # photometric-only baseline (scale-ambiguous)
    python3 sfm_aign.py --data DIR --memory MEM       # your sequences (layouts: --help)
"""
import argparse
import collections
import functools
import glob
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import InputError

SCRIPT = "sfm_aign"
NETS = ("depth_net", "pose_net", "D_depth", "D_motion")
ARCH = ("height", "width", "min_depth", "max_depth")  # a checkpoint's networks follow these
STRETCH = 10  # paired triplets come in stretches of this many consecutive ones (--paired-frac)
KITTI_DEPTH = os.path.join("proj_depth", "groundtruth", "image_02")  # KITTI depth benchmark: PNG / 256, 0 = none
LAYOUTS = """--data layouts (details: README; frames and K are resized to --height x --width when read):
  generic  DIR/<seq>/images/*.png|jpg, intrinsics.txt ('fx fy cx cy' or 3x3 K) [, poses.txt, depth/ (z, m)];
           DIR/train/, DIR/test/ (and DIR/val/) of such folders are the splits, DIR/memory/ the --memory
  KITTI    raw ROOT/<date>/<date>_drive_XXXX_sync/image_02/data/ (or ROOT = one <date>) [, the drive's GT
           proj_depth/groundtruth/image_02/ from the depth benchmark], or odometry ROOT/sequences/NN/image_2/;
           --memory may be the depth benchmark's train/ (<drive>/proj_depth/groundtruth/image_02/*.png)"""


# ----------------------------------------------------------------------------------------------
# Args
def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__.split("\n")[0], epilog=LAYOUTS,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, steps=2000, batch_size=8, lr=2e-4, eval_every=500)
    add = p.add_argument
    add("--memory", help="unpaired memory: sequence folders with depth/*.npy|png and/or poses.txt, not "
                         "trained on (default: DATA/memory if it exists; the built-in data has one)")
    add("--memory-gaps", choices=["far", "unknown"], default="far", help="a memory depth map's 0 pixels: far "
        "(a renderer's sky: D sees --max-depth there) or unknown (LiDAR without a return: D sees the predictions "
        "only where the memory map it is paired with has depth) (default: far)")
    add("--gt-depth", help="test GT npz, replacing the test sequences' own maps: 'depth' (N,H,W) m, 'frames' (N,) "
                           "'<seq> <index>' (0-based, file order); or Monodepth2's splits/<split>/gt_depths.npz "
                           "beside its test_files.txt (default: none)")
    add("--height", type=int, default=48, help="training image height (default: 48)")
    add("--width", type=int, default=160, help="training image width (default: 160)")
    add("--lambda-rec", type=float, default=1.0, help="weight of the photometric reconstruction (default: 1)")
    add("--lambda-smooth", type=float, default=1e-3, help="disparity smoothness weight (default: 0.001)")
    add("--lambda-adv", type=float, default=0.01, help="adversarial weight, 0 = no memory (default: 0.01)")
    add("--adv-on", choices=["both", "depth", "motion"], default="depth",
        help="memories the discriminators judge (default: depth, chosen on the built-in val/ split)")
    add("--adv-warmup", type=int, default=500, help="ramp --lambda-adv up from 0 over N steps (default: 500)")
    add("--d-input", choices=["log", "normalised"], default="log", help="what the depth discriminator sees: "
        "log-depth, or log-depth minus its per-image mean (scale-free) (default: log)")
    add("--lambda-sup", type=float, default=1.0, help="weight of the supervised loss on pairs (default: 1)")
    add("--paired-frac", type=float, default=0.0,
        help=f"fraction of triplets with GT used, in stretches of {STRETCH} consecutive ones (default: 0)")
    add("--gan", default="bce", choices=["bce", "lsgan", "wgan-gp"], help="GAN loss (default: bce, paper's)")
    add("--lr-d", type=float, default=None, help="discriminator learning rate (default: --lr)")
    add("--min-depth", type=float, default=0.5, help="smallest predictable depth, m (default: 0.5)")
    add("--max-depth", type=float, default=100.0, help="largest predictable depth, m (default: 100)")
    add("--depth-png-scale", type=float, default=1000.0, help="16-bit depth PNGs of the generic layout hold depth "
        "x this (default: 1000, millimetres; KITTI's depth-benchmark maps, proj_depth/groundtruth/, are always "
        "read as PNG / 256)")
    add("--eval-cap", type=float, default=80.0, help="evaluate depth on GT in 0.001..CAP m, predictions clamped "
        "to the same range (default: 80)")
    add("--eval-crop", choices=["garg", "none"], help="depth evaluation window: the Eigen split's Garg "
        "crop or the whole frame (default: garg with --gt-depth, else none)")
    args = p.parse_args(argv)
    common.check_args(args, nonneg_ints=("adv_warmup",))
    if min(args.height, args.width) < 16:
        raise InputError(f"--height {args.height} --width {args.width}: expected sizes >= 16")
    if not 0 < args.depth_png_scale < math.inf:
        raise InputError(f"--depth-png-scale {args.depth_png_scale}: expected a positive PNG value per metre")
    if not (1e-6 <= args.min_depth < args.max_depth <= 1e6 and 1e-3 < args.eval_cap <= 1e6):  # float32-safe
        raise InputError(f"--min-depth {args.min_depth} --max-depth {args.max_depth} --eval-cap "
                         f"{args.eval_cap}: expected metres, 1e-6 <= min < max <= 1e6, a cap in (0.001, 1e6]")
    return args


# ----------------------------------------------------------------------------------------------
# Data
# Every source becomes sequences: dict(name, images (N,3,H,W) uint8 at the training size, size (h,w) of
# the files, stems (N,) file names without extension, K (3,3) at the training size, poses (N,4,4) camera-to-
# world or None, depth {frame index: the path of a GT map, checked when loaded and read again when evaluated,
# or an array}, png_scale: what its 16-bit depth PNGs are divided by).
def read_image(path, hw, dtype=np.uint8):
    """An 8-bit frame -> (uint8 (3,H,W) at hw, area-averaged if shrunk, else bilinear; the file's size (h,w));
    with hw None, the array as it is (a 16-bit depth PNG)."""
    import imageio.v3 as iio
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise InputError(f"{path}: cannot be read as an image ({type(e).__name__})") from None
    if hw is not None and img.ndim == 3 and img.shape[-1] == 2:
        img = img[..., 0]  # grey + alpha -> grey
    if img.dtype != dtype or (hw is not None and img.ndim != 2 and (img.ndim != 3 or img.shape[-1] not in (3, 4))):
        raise InputError(f"{path}: expected an 8-bit grey/RGB/RGBA image (16-bit for depth), found shape "
                         f"{img.shape} {img.dtype}")
    if hw is None:
        return img
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)  # grey -> RGB
    x = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1)[None].float()  # (1,3,h,w)
    shrink = x.shape[-2] >= hw[0] and x.shape[-1] >= hw[1]
    x = F.interpolate(x, size=hw, mode="area" if shrink else "bilinear")
    return x[0].round().clamp(0, 255).to(torch.uint8), img.shape[:2]

def read_intrinsics(path, key=None):
    """intrinsics.txt ('fx fy cx cy' or a 3x3 K) -> K (3,3); with key, the left 3x3 of the 3x4 P on the
    KITTI calibration line 'key: ...' ('P_rect_02' in calib_cam_to_cam.txt, 'P2' in calib.txt)."""
    want = "'fx fy cx cy' or a 3x3 K" if key is None else f"a line '{key}: <12 numbers>' (KITTI calibration)"
    if key is None:
        v = common.read_numbers(path, want).ravel()
    else:
        lines = common.read_text(path, want).splitlines()
        found = [ln.split()[1:] for ln in lines if ln.startswith(key + ":")]
        try:
            v = np.array(found[0], dtype=np.float64).reshape(3, 4)[:, :3].ravel()
        except (IndexError, ValueError):  # no such line, or not 12 numbers
            raise InputError(f"{path}: expected {want}, found {found[:1] or 'no such line'}") from None
    if len(v) == 4:
        v = np.array([v[0], 0, v[2], 0, v[1], v[3], 0, 0, 1])
    if len(v) != 9:
        raise InputError(f"{path}: expected {want}, found {len(v)} numbers")
    K = v.reshape(3, 3)
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(f"{path}: intrinsics fx={K[0, 0]:g}, fy={K[1, 1]:g}; expected finite fx, fy > 0")
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise InputError(f"{path}: expected a camera matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]], found "
                         f"rows 2-3 {K[1:].tolist()}")
    return K

def rescale_K(K, sx, sy):
    """Intrinsics for an image resized by (sx, sy), pixel centres at integer coordinates:
    u' = (u + 0.5) * sx - 0.5, so fx' = fx * sx and cx' = (cx + 0.5) * sx - 0.5."""
    K = np.array(K, dtype=np.float64)
    K[0, 0], K[0, 1], K[0, 2] = K[0, 0] * sx, K[0, 1] * sx, (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    return K

def read_poses(path, n=None):
    """KITTI odometry format: one line per frame, 12 numbers, row-major 3x4 camera-to-world [R|t]."""
    rows = common.read_numbers(path, "KITTI poses (12 numbers a line, camera-to-world 3x4)", cols=12)
    if n is not None and len(rows) != n:
        raise InputError(f"{path}: expected {n} lines (one per frame), found {len(rows)}")
    P = np.tile(np.eye(4), (len(rows), 1, 1))
    P[:, :3] = rows.reshape(-1, 3, 4)
    err = np.abs(P[:, :3, :3].transpose(0, 2, 1) @ P[:, :3, :3] - np.eye(3)).max((1, 2))
    bad = np.flatnonzero((err > 1e-2) | (np.linalg.det(P[:, :3, :3]) <= 0))
    if len(bad):
        raise InputError(f"{path}: line {bad[0] + 1}: the 3x3 part is not a rotation (singular or not "
                         f"orthonormal: |R^T R - I| = {err[bad[0]]:.3g}); expected camera-to-world [R|t]")
    if (far := np.abs(P[:, :3, 3]).max(1) > 1e7).any():  # beyond, ATE's sums of squares overflow to inf
        i = far.argmax()
        raise InputError(f"{path}: line {i + 1}: translation {P[i, :3, 3].tolist()}; expected metres, |t| <= 1e7")
    return P

def read_depth(path, size, png_scale=1000.0):
    """depth/<frame>.npy (float metres, 0 = invalid) or a 16-bit PNG of depth x png_scale -> float32 (h,w)."""
    what = (f"a depth map{f' of size {size}' if None not in size else ''}: float metres (.npy) or 16-bit "
            f"metres x {png_scale:g} (.png)")
    if path.endswith(".npy"):
        return check_metres(common.check_array(common.load_npy(path, what), path, "depth", size, what), path)
    return common.check_array(read_image(path, None, np.uint16) / png_scale, path, "depth", size, what)

def check_metres(depth, path):
    """Float depth maps must be metres: a median beyond a kilometre is millimetres (or another unit)."""
    if (median := np.median(depth[depth > 0]) if (depth > 0).any() else 0) > 1000:
        raise InputError(f"{path}: median depth {median:g}; expected metres "
                         f"(millimetres? divide by 1000; 16-bit PNG depth maps are divided by --depth-png-scale)")
    return depth

def gt_depth(seq, i, hw=None):
    """Frame i's GT map (h,w) (read again from its file, or the --gt-depth array); with hw, (1,H,W) at
    that size by nearest neighbour (which never mixes valid and invalid pixels)."""
    d = seq["depth"][i]
    if isinstance(d, str):
        d = read_depth(d, seq["size"], seq["png_scale"])
    return d if hw is None else F.interpolate(torch.from_numpy(d)[None, None], size=hw, mode="nearest")[0]

def list_files(folder, ext=(".png", ".jpg", ".jpeg")):
    """A folder's frames in frame order: numbers in names compare as numbers (2.png before 10.png)."""
    return sorted((p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(ext)),
                  key=lambda p: common.natural_key(os.path.basename(p)))

def make_sequence(name, paths, K, poses_path, hw, depth_dir=None, where=None, k_path=None, png_scale=1000.0):
    """Read one sequence (the frames of folder `where`) frame by frame at the training size hw; rescale K
    (read from k_path: checked against the frames' size); its GT depth PNGs hold depth x png_scale."""
    if len(paths) < 3:
        raise InputError(f"{where or name}: expected at least 3 frames (*.png|jpg), found {len(paths)}")
    frames, sizes = zip(*(read_image(p, hw) for p in paths))
    for p, s in zip(paths, sizes):
        if s != sizes[0]:
            raise InputError(f"{p}: expected the sequence's image size {sizes[0]} (as {paths[0]}), found {s}")
    (h, w) = sizes[0]
    fov = 2 * np.degrees(np.arctan2([w / 2, h / 2], [K[0, 0], K[1, 1]]))  # horizontal, vertical
    if k_path and not (-0.5 <= K[0, 2] <= w - 0.5 and -0.5 <= K[1, 2] <= h - 0.5 and fov.max() < 175):
        raise InputError(f"{k_path}: fx fy cx cy = {K[0, 0]:g} {K[1, 1]:g} {K[0, 2]:g} {K[1, 2]:g} for frames of "
                         f"{w}x{h} ({paths[0]}): expected pixels of this size (principal point inside the frame, "
                         f"field of view < 175 deg; K of another resolution, or normalised?)")
    depth = {}  # frame index -> its GT file (.npy before .png)
    for i, p in enumerate(paths if depth_dir else []):
        stem = os.path.join(depth_dir, os.path.splitext(os.path.basename(p))[0])
        found = [f for f in (stem + ".npy", stem + ".png") if os.path.isfile(f)]
        if found:
            depth[i] = found[0]
            read_depth(found[0], sizes[0], png_scale)  # checked now, read again when evaluated
    if depth_dir and not depth and (maps := list_files(depth_dir, (".npy", ".png"))):
        stem = os.path.splitext(os.path.basename(paths[0]))[0]
        raise InputError(f"{depth_dir}: expected depth maps named as the frames ({os.path.basename(paths[0])} -> "
                         f"{stem}.npy|png), found none such (e.g. {os.path.basename(maps[0])})")
    images = torch.stack(frames).contiguous(memory_format=torch.channels_last)  # (N, 3, H, W) uint8, NHWC
    return dict(name=name, images=images, size=sizes[0], depth=depth, png_scale=png_scale,
                stems=[os.path.splitext(os.path.basename(p))[0] for p in paths],
                poses=read_poses(poses_path, len(paths)) if os.path.exists(poses_path) else None,
                K=rescale_K(K, hw[1] / sizes[0][1], hw[0] / sizes[0][0]))

def load_sequences(root, hw, png_scale=1000.0):
    """The sequences of root in its layout: KITTI odometry, KITTI raw, or generic sequence folders."""
    if not os.path.isdir(root):
        raise InputError(f"{root}: no such folder (expected a dataset folder; layouts: --help)")
    # KITTI raw drives (ROOT/<date>/ or ROOT = one <date>): with image_02/ or beside a calibration, so a date
    # folder that lacks its calibration is an error, not skipped (generic folders may be named *_sync too)
    drives = sorted(d for d in glob.glob(os.path.join(root, "*", "*_sync")) + glob.glob(os.path.join(root, "*_sync"))
                    if os.path.isdir(os.path.join(d, "image_02")) or
                    os.path.isfile(os.path.join(os.path.dirname(d), "calib_cam_to_cam.txt")))
    if os.path.isdir(os.path.join(root, "sequences")):  # KITTI odometry
        found = [(d, "image_2", os.path.join(d, "calib.txt"), "P2",
                  os.path.join(root, "poses", os.path.basename(d) + ".txt"), None, png_scale)
                 for d in sorted(glob.glob(os.path.join(root, "sequences", "*"))) if os.path.isdir(d)]
    elif drives:  # KITTI raw
        found = [(d, os.path.join("image_02", "data"), os.path.join(os.path.dirname(d), "calib_cam_to_cam.txt"),
                  "P_rect_02", os.path.join(d, "poses.txt"), os.path.join(d, KITTI_DEPTH), 256.0) for d in drives]
    else:  # generic
        dirs = [d for d in sorted(glob.glob(os.path.join(root, "*")))
                if os.path.isdir(os.path.join(d, "images"))]
        found = [(d, "images", os.path.join(d, "intrinsics.txt"), None, os.path.join(d, "poses.txt"),
                  os.path.join(d, "depth"), png_scale) for d in dirs]
    if not found:
        raise InputError(f"{root}: expected sequence folders <seq>/images/*.png with <seq>/intrinsics.txt, "
                         "KITTI raw <date>/<date>_drive_XXXX_sync/image_02/data/ or KITTI odometry "
                         "sequences/NN/image_2/, found none (layouts: --help)")
    return [make_sequence(os.path.basename(d), list_files(os.path.join(d, images)), read_intrinsics(k, key),
                          poses, hw, depth, os.path.join(d, images), k, scale)
            for d, images, k, key, poses, depth, scale in found]

GT_LAYOUT = ("'depth' (N,H,W) metres and 'frames' (N,) '<sequence> <frame index>', or Monodepth2's gt_depths.npz "
             "('data': N maps in metres) beside its test_files.txt (N lines '<date>/<drive> <frame number> l')")

def attach_gt_depth(seqs, path):
    """Eigen-style GT maps (at their frames' size; 0 = no LiDAR point) for listed frames: our npz, or Monodepth2's
    splits/<split>/gt_depths.npz, whose maps differ in size across KITTI's dates and are therefore a pickled
    array of arrays (read by the restricted unpickler: arrays only, no code runs). They replace the sequences'
    own GT maps: the listed frames are the ones evaluated (the Eigen protocol)."""
    z = common.load_npz(path, what=GT_LAYOUT, pickled=("depth", "data"))
    if "data" in z and "depth" not in z:  # Monodepth2: frames named by file number, the left colour camera
        txt = os.path.join(os.path.dirname(path), "test_files.txt")
        lines = [ln.split() for ln in common.read_text(txt, GT_LAYOUT).splitlines() if ln.strip()]
        if bad := [ln for ln in lines if len(ln) != 3 or not ln[1].isdigit() or ln[2] != "l"]:
            raise InputError(f"{txt}: line {' '.join(bad[0])!r}; expected '<date>/<drive> <frame number> l' "
                             "(Monodepth2's split files; only the left colour camera, image_02, is loaded)")
        entries, maps = [(f"{a} {b}", os.path.basename(a), b) for a, b, _ in lines], z["data"]
    elif "depth" in z and "frames" in z:
        entries, maps = [(e, *e.partition(" ")[::2]) for e in map(str, z["frames"])], z["depth"]
    else:
        raise InputError(f"{path}: found {sorted(z)}; expected {GT_LAYOUT}")
    if isinstance(maps, np.ndarray) and maps.dtype != object:  # one size: (N,H,W)
        maps = common.check_array(maps, path, "depth" if "depth" in z else "data", (None, None, None), GT_LAYOUT)
    maps = [check_metres(common.check_array(common.as_numbers(d, path, f"map {i}", GT_LAYOUT), path, f"map {i}",
                                            (None, None), GT_LAYOUT), path) for i, d in enumerate(maps)]
    distinct = len({e for e, *_ in entries})
    if len(entries) != len(maps) or distinct < len(maps):
        raise InputError(f"{path}: {len(entries)} frame entries ({distinct} distinct) for {len(maps)} depth maps; "
                         f"expected {GT_LAYOUT}, one map per frame")
    by_name = {s["name"]: s for s in seqs}
    number = {s["name"]: {int(t): k for k, t in enumerate(s["stems"]) if t.isdigit()} for s in seqs}  # -> index
    for s in seqs:
        s["depth"] = {}
    for (entry, name, frame), d in zip(entries, maps):
        s = by_name.get(name)
        size = s["size"] if s else None
        i = (number[name].get(int(frame)) if "data" in z else int(frame)) if s and frame.isdigit() else None
        if i is None or i >= len(s["images"]) or d.shape != size:
            raise InputError(f"{path}: frame entry {entry!r} (depth map of size {d.shape}): expected '<sequence> "
                             f"<frame {'number' if 'data' in z else 'index'}>' of a loaded sequence "
                             f"({sorted(by_name)[:3]}...) and its frames' size{f' {size}' if size else ''}")
        s["depth"][i] = d

def load_memory(root, hw, max_depth, png_scale=1000.0, gaps="far"):
    """The unpaired memory (sequences not trained on): depth maps at the training size (M,1,H,W), clamped to
    max depth, invalid pixels -> max depth (gaps far) or kept at 0 (unknown: masked in train_step; KITTI's
    depth-benchmark maps always keep 0, LiDAR without a return), and the two motions t->t-1, t->t+1 of every
    triplet of their poses (Q,12)."""
    depths, motions, n_kitti = [], [], 0
    for d in sorted(d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(d)):
        kitti = os.path.isdir(os.path.join(d, KITTI_DEPTH))  # a drive of KITTI's depth benchmark: LiDAR, 0 = none
        for f in list_files(os.path.join(d, KITTI_DEPTH if kitti else "depth"), (".npy", ".png")):
            x = torch.from_numpy(read_depth(f, (None, None), 256.0 if kitti else png_scale))[None, None]  # (1,1,h,w)
            if not (x > 0).any():  # it would teach D a wall at --max-depth
                raise InputError(f"{f}: no pixel > 0; expected a depth map in metres (0 = invalid) with valid pixels")
            x = F.interpolate(x, size=hw, mode="nearest")[0]
            depths.append(torch.where(x > 0, x.clamp(max=max_depth), max_depth if gaps == "far" and not kitti else 0.0))
            n_kitti += kitti
        if os.path.isfile(os.path.join(d, "poses.txt")):
            P = torch.from_numpy(read_poses(os.path.join(d, "poses.txt")))
            if len(P) < 4:  # fewer: no motion, or one (whose spread, the D's scale, is NaN)
                raise InputError(f"{d}/poses.txt: {len(P)} pose(s); expected >= 4 (memory motions come from "
                                 "triplets of consecutive frames)")
            T = torch.stack([torch.linalg.inv(P[:-2]) @ P[1:-1], torch.linalg.inv(P[2:]) @ P[1:-1]], 1)
            motions.append(matrix_to_pose6(T).flatten(1))  # (N-2, 12)
    if not depths and not motions:
        one = any(os.path.exists(os.path.join(root, f)) for f in ("depth", "poses.txt", KITTI_DEPTH))
        hint = ("; this is one sequence folder: pass the folder above it" if one else
                f"; pass {os.path.join(root, 'memory')}" if os.path.isdir(os.path.join(root, "memory")) else "")
        raise InputError(f"--memory {root}: expected <seq>/depth/*.npy|png and/or <seq>/poses.txt: none{hint}")
    if n_kitti:
        common.log(f"note: --memory {root}: {n_kitti} KITTI depth benchmark maps ({KITTI_DEPTH}): depth = PNG / 256, "
                   "0 = no LiDAR return (as --memory-gaps unknown)")
    if depths and gaps == "far" and (empty := float(np.mean([(d >= max_depth).float().mean() for d in depths]))) > 0.5:
        common.log(f"note: --memory {root}: {empty:.0%} of its depth pixels are 0 or >= --max-depth; if they are "
                   "LiDAR without a return rather than sky, --memory-gaps unknown keeps D from learning them as walls")
    return (torch.stack(depths) if depths else None), (torch.cat(motions).float() if motions else None)

def load_data(args, dist):
    """{train, test[, val]: sequences, mem_depth, mem_motion} from --data (or the built-in streets)."""
    hw = (args.height, args.width)
    root = args.data or common.builtin_dataset(__file__, "sfm", "sfm_builtin", dist, device=str(dist.device))
    splits = [k for k in ("train", "val", "test") if os.path.isdir(os.path.join(root, k))]
    if "train" in splits and "test" in splits:
        data = {k: load_sequences(os.path.join(root, k), hw, args.depth_png_scale) for k in splits}
    else:
        data = dict.fromkeys(("train", "test"), load_sequences(root, hw, args.depth_png_scale))
        common.log(f"note: {root} has no train/ and test/ folders: its sequences are both trained and tested on "
                   "(a held-out test needs DIR/train/ and DIR/test/)", dist)
    if args.gt_depth:
        attach_gt_depth(data["test"], args.gt_depth)
    memory = args.memory or os.path.join(root, "memory")  # the data's own memory/ unless --memory is given
    found = args.memory or os.path.isdir(memory)
    data["mem_depth"], data["mem_motion"] = (load_memory(memory, hw, args.max_depth, args.depth_png_scale,
                                                         args.memory_gaps) if found else (None, None))
    return data


# ----------------------------------------------------------------------------------------------
# Networks
def conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ELU())

class DepthNet(nn.Module):
    """U-Net: frame (B,3,H,W) -> depth (B,1,H,W) = 1 / a sigmoid disparity in [1/max_depth, 1/min_depth],
    so always positive and finite. No net has batch norm or dropout: train and eval modes are the same."""

    def __init__(self, min_depth, max_depth, ch=(16, 32, 64, 96, 128)):
        super().__init__()
        self.min_disp, self.max_disp = 1.0 / max_depth, 1.0 / min_depth
        self.enc = nn.ModuleList([nn.Sequential(conv(cin, c, 2), conv(c, c))
                                  for cin, c in zip((3,) + ch[:-1], ch)])
        self.dec = nn.ModuleList([nn.Sequential(conv(ch[i + 1] + ch[i], ch[i]), conv(ch[i], ch[i]))
                                  for i in reversed(range(len(ch) - 1))])
        self.head = nn.Sequential(conv(ch[0], 16), nn.Conv2d(16, 1, 3, 1, 1))

    def forward(self, img):  # (B, 3, H, W) in [0, 1]
        x, feats = (img - 0.45) / 0.225, []  # Monodepth2's input normalisation
        for layer in self.enc:
            x = layer(x)  # halves the size
            feats.append(x)
        for layer, skip in zip(self.dec, feats[-2::-1]):
            x = layer(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        x = self.head(F.interpolate(x, size=img.shape[-2:], mode="nearest"))
        disp = self.min_disp + (self.max_disp - self.min_disp) * torch.sigmoid(x)
        return 1.0 / disp  # (B, 1, H, W) metres

class PoseNet(nn.Module):
    """Frames t-1, t, t+1 on channels (B,9,H,W) -> the motions t->t-1, t->t+1 (B,2,6): axis-angle (rad)
    and translation (m). SfMLearner's design (its output scale is 0.01 for all six; here 0.1 for the
    translation in metres), so the motions start near the identity."""

    def __init__(self, ch=(16, 32, 64, 128, 128)):
        super().__init__()
        self.net = nn.Sequential(*[conv(cin, c, 2) for cin, c in zip((9,) + ch[:-1], ch)],
                                 nn.Conv2d(ch[-1], 12, 1))
        self.register_buffer("scale", torch.tensor([0.01, 0.01, 0.01, 0.1, 0.1, 0.1]), persistent=False)

    def forward(self, prev, target, nxt):  # (B, 3, H, W) each
        x = torch.cat([prev, target, nxt], 1)
        return self.net((x - 0.45) / 0.225).mean((2, 3)).view(-1, 2, 6) * self.scale  # (B, 2, 6)

class PatchD(nn.Module):
    """Depth-map discriminator: depth (B,1,H,W) metres -> log(depth / 10 m) (centred on street-scale depths)
    -> a grid of real/fake logits (B,1,H/8,W/8); with normalise, log-depth minus its per-image mean (D then
    judges the shape of a map, not its scale)."""

    def __init__(self, normalise=False, ch=(16, 32, 64)):
        super().__init__()
        self.normalise = normalise
        self.net = nn.Sequential(*[m for cin, c in zip((1,) + ch[:-1], ch) for m in (
            nn.Conv2d(cin, c, 4, 2, 1), nn.LeakyReLU(0.2))], nn.Conv2d(ch[-1], 1, 3, 1, 1))

    def forward(self, depth):  # (B, 1, H, W) metres
        x = torch.log(depth)
        return self.net(x - (x.mean((2, 3), keepdim=True) if self.normalise else math.log(10.0)))

class MotionD(nn.Module):
    """Camera-motion discriminator: the two motions of a triplet (B,12) (t->t-1, t->t+1) -> logits
    (B,1), standardised with the memory's statistics (set by set_memory, kept in the checkpoint)."""

    def __init__(self, width=128):
        super().__init__()
        self.register_buffer("mean", torch.zeros(12))
        self.register_buffer("std", torch.ones(12))
        self.net = nn.Sequential(nn.Linear(12, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def set_memory(self, motions):  # (Q, 12)
        self.mean.copy_(motions.mean(0))
        self.std.copy_(motions.std(0).clamp(min=1e-3))

    def forward(self, motions):  # (B, 12)
        return self.net((motions - self.mean) / self.std)

def build_nets(args, device):
    """The four nets, conv weights channels-last like the frames (no reorder per convolution: 4-7% faster)."""
    nets = {"depth_net": DepthNet(args.min_depth, args.max_depth), "pose_net": PoseNet(),
            "D_depth": PatchD(args.d_input == "normalised"), "D_motion": MotionD()}
    return {k: m.to(device, memory_format=torch.channels_last) for k, m in nets.items()}


# ----------------------------------------------------------------------------------------------
# Renderer
def axis_angle_to_matrix(r):
    """Rodrigues: (..., 3) -> (..., 3, 3); a Taylor form near 0 keeps gradients finite."""
    th2 = (r * r).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = th2 < 1e-8
    safe = torch.where(small, torch.ones_like(th2), th2)  # no 0/0 in the branch that is not taken
    th = torch.sqrt(safe)
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / safe)
    x, y, z = r.unbind(-1)
    o = torch.zeros_like(x)
    Kx = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*r.shape[:-1], 3, 3)
    return torch.eye(3, dtype=r.dtype, device=r.device) + a * Kx + b * (Kx @ Kx)

def matrix_to_pose6(T):
    """(..., 4, 4) rigid transforms -> (..., 6) axis-angle + translation (rotations well below pi)."""
    R = T[..., :3, :3]
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    th = torch.acos(cos)[..., None]
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                       R[..., 1, 0] - R[..., 0, 1]], -1)
    fac = torch.where(th < 1e-6, torch.full_like(th, 0.5), th / (2 * torch.sin(th).clamp(min=1e-12)))
    return torch.cat([vee * fac, T[..., :3, 3]], -1)

def pose6_to_matrix(p):
    """(..., 6) -> (..., 4, 4)."""
    T = torch.eye(4, dtype=p.dtype, device=p.device).repeat(*p.shape[:-1], 1, 1)
    T[..., :3, :3] = axis_angle_to_matrix(p[..., :3])
    T[..., :3, 3] = p[..., 3:]
    return T

@functools.lru_cache(maxsize=None)
def pixel_grid(H, W, dtype, device):
    """(3, H*W) rows u, v, 1 of every pixel centre (integer coordinates), row-major: built once per size."""
    v, u = torch.meshgrid(torch.arange(H, dtype=dtype, device=device),
                          torch.arange(W, dtype=dtype, device=device), indexing="ij")
    return torch.stack([u, v, torch.ones_like(u)]).reshape(3, H * W)

def inverse_intrinsics(K):
    """K^-1 of (B,3,3) camera matrices [[fx, s, cx], [0, fy, cy], [0, 0, 1]] in closed form."""
    fx, fy, cx, cy, s = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 0, 1]
    o, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([1 / fx, -s / (fx * fy), (s * cy - cx * fy) / (fx * fy), o, 1 / fy, -cy / fy,
                        o, o, one], -1).view(-1, 3, 3)

class Project(torch.autograd.Function):
    """Depth d (B,HW), M (B,3,3), c (B,3,1), pixels (3,HW) -> (x, y) = (q_x, q_y) / q_z (B,2,HW) with
    q = d M [u v 1]^T + c, and valid (B,HW): q_z > 0, |x|, |y| <= 1. Hand-written backward (fewer passes than
    autograd's): g_q = (g_x, g_y, -(g_x x + g_y y)) / q_z, g_d = sum_k g_q,k (M [u v 1]^T)_k,
    g_M = d g_q [u v 1], g_c = the sum of g_q over pixels."""

    @staticmethod
    def forward(ctx, d, M, c, pix):
        p = M @ pix  # (B, 3, HW): the rotated rays
        q = torch.addcmul(c, d[:, None], p)  # (B, 3, HW)
        z = q[:, 2:].clamp(min=1e-6)
        xy = q[:, :2] / z  # (B, 2, HW)
        valid = (q[:, 2] > 1e-6) & (xy.abs().amax(1) <= 1)
        ctx.mark_non_differentiable(valid)
        ctx.save_for_backward(d, p, xy, z, q[:, 2] < 1e-6, pix)
        return xy, valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):  # g (B, 2, HW), a strided view of grid_sample's (B, H, W, 2)
        d, p, xy, z, clamped, pix = ctx.saved_tensors
        g_q = g.new_empty(len(d), 3, d.shape[1])  # (B, 3, HW), filled in place: fewer passes over memory
        torch.div(g, z, out=g_q[:, :2])
        g_z = torch.mul(g_q[:, 0], xy[:, 0], out=g_q[:, 2]).addcmul_(g_q[:, 1], xy[:, 1])
        g_z.masked_fill_(clamped, 0).neg_()  # no gradient through q_z where it was clamped
        g_d = (g_q[:, 0] * p[:, 0]).addcmul_(g_q[:, 1], p[:, 1]).addcmul_(g_q[:, 2], p[:, 2])
        return g_d, (g_q * d[:, None]) @ pix.T, g_q.sum(2, keepdim=True), None

def inverse_warp(source, depth, pose6, K):
    """Rebuild the target frame from a source frame.
    source (B,C,H,W); depth (B,1,H,W) of the target; pose6 (B,6) target->source; K (B,3,3) at this size.
    Camera frame: x right, y down, z forward; pixel centres at integer (u, v).
      X = d K^-1 [u v 1]^T  ->  X' = R X + t  ->  (u', v') = K X' / z'  ->  bilinear sample of source,
    fused into one projection: N K X' = d (N K R K^-1) [u v 1]^T + N K t, where N maps pixels to
    grid_sample's [-1, 1] (align_corners=True: -1/+1 are the centres of the first/last pixels).
    Returns the warped image (B,C,H,W) and the validity mask (B,1,H,W): inside the source, z' > 0."""
    B, _, H, W = source.shape
    N = K.new_tensor([[2 / (W - 1), 0, -1], [0, 2 / (H - 1), -1], [0, 0, 1]])
    NK = N @ K  # (B, 3, 3)
    M = NK @ axis_angle_to_matrix(pose6[:, :3]) @ inverse_intrinsics(K)  # (B, 3, 3)
    xy, valid = Project.apply(depth.reshape(B, H * W), M, NK @ pose6[:, 3:, None],
                              pixel_grid(H, W, depth.dtype, depth.device))  # (B, 2, HW), (B, HW)
    grid = xy.transpose(1, 2).reshape(B, H, W, 2)  # source pixels in [-1, 1]
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped, valid.view(B, 1, H, W).to(source.dtype)


# ----------------------------------------------------------------------------------------------
# Losses
def ssim_dissimilarity(x, y):
    """(1 - SSIM) / 2 on 3x3 windows, per pixel (B,C,H,W)."""
    def pool(t):  # 3x3 means, reflected borders: two 3-tap sums (avg_pool2d is ~4x slower on CPU)
        t = F.pad(t, (1, 1, 1, 1), mode="reflect")
        s = t[..., :-2, :] + t[..., 1:-1, :] + t[..., 2:, :]
        return (s[..., :-2] + s[..., 1:-1] + s[..., 2:]) / 9
    mx, my = pool(x), pool(y)
    sx, sy, sxy = pool(x * x) - mx ** 2, pool(y * y) - my ** 2, pool(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sx + sy + c2))
    return ((1 - ssim) / 2).clamp(0, 1)

def photometric_error(pred, target):
    """The renderer's reconstruction error per pixel (B,1,H,W): 0.85 (1-SSIM)/2 + 0.15 L1."""
    return 0.85 * ssim_dissimilarity(pred, target).mean(1, keepdim=True) + \
        0.15 * (pred - target).abs().mean(1, keepdim=True)

def reconstruction_loss(tgt, srcs, depth, pose, K):
    """Warp both sources (b,2,3,H,W) into the target (b,3,H,W) with the predicted depth (b,1,H,W) and
    motions (b,2,6); per pixel keep the better source (occlusions; Monodepth2's minimum reprojection)
    and ignore pixels that no source sees."""
    warped, valid = inverse_warp(srcs.flatten(0, 1), depth.repeat_interleave(2, 0), pose.flatten(0, 1),
                                 K.repeat_interleave(2, 0))
    err = photometric_error(warped, tgt.repeat_interleave(2, 0))  # (2b, 1, H, W)
    err = torch.where(valid > 0, err, torch.full_like(err, 1e3)).view(len(tgt), 2, *err.shape[-2:])
    err = err.min(1).values  # (b, H, W): the better source per pixel
    seen = err < 1e3
    return (err * seen).sum() / seen.sum().clamp(min=1)

def smoothness(depth, img):
    """Edge-aware smoothness of mean-normalised disparity: flat where the image is flat."""
    disp = 1 / depth
    disp = disp / disp.mean((2, 3), keepdim=True)
    dx, dy = (disp[..., :, 1:] - disp[..., :, :-1]).abs(), (disp[..., 1:, :] - disp[..., :-1, :]).abs()
    ix = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(1, keepdim=True)
    iy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()

def supervised_loss(depth, pose, gt_d, gt_pose):
    """Paired frames: L1 of log-depth on valid GT pixels (b,1,H,W) + L1 of the two motions (b,2,6)."""
    v = gt_d > 0
    return (depth[v].log() - gt_d[v].log()).abs().mean() + (pose - gt_pose).abs().mean()

def d_loss(D, real, fake, gan):
    """Discriminator: memory samples are real, predictions fake (same shapes)."""
    logits = D(torch.cat([real, fake]))
    lr, lf = logits[:len(real)], logits[len(real):]
    if gan == "bce":  # -log D(y_mem) - log(1 - D(G(x))): the paper's loss
        return F.softplus(-lr).mean() + F.softplus(lf).mean()
    if gan == "lsgan":  # least squares (Mao et al. 2017)
        return 0.5 * ((lr - 1) ** 2).mean() + 0.5 * (lf ** 2).mean()
    # WGAN-GP (Gulrajani et al. 2017): the critic's gap plus a gradient penalty on interpolates
    alpha = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)
    return lf.mean() - lr.mean() + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

def g_adv_loss(D, fake, gan):
    """Generator's adversarial term: make predictions look like memory samples."""
    logits = D(fake)
    if gan == "bce":  # non-saturating -log D(G(x))
        return F.softplus(-logits).mean()
    if gan == "lsgan":
        return 0.5 * ((logits - 1) ** 2).mean()
    return -logits.mean()


# ----------------------------------------------------------------------------------------------
# Evaluation and figures
def depth_metrics(pred, gt):
    """Eigen et al. metrics over valid pixels; pred, gt 1-D tensors of metres."""
    thresh = torch.maximum(gt / pred, pred / gt)
    return {"abs_rel": ((gt - pred).abs() / gt).mean().item(),
            "sq_rel": ((gt - pred) ** 2 / gt).mean().item(),
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
def predict_sequence(nets, images, device, chunk=32):
    """images (N>=3,3,H,W) uint8 -> depth (N,1,H,W) and camera-to-first-frame poses (N,4,4), chained
    from the motions i -> i+1 of the triplets centred at i = 1..N-2 (and 0 -> 1 = inverse of 1 -> 0)."""
    depth, motion = [], []
    for i in range(0, len(images), chunk):
        x = images[max(i - 1, 0):i + chunk + 1].to(device).float() / 255
        depth.append(nets["depth_net"](x[int(i > 0):][:chunk]).cpu())
        if len(x) >= 3:
            motion.append(nets["pose_net"](x[:-2], x[1:-1], x[2:]).double().cpu())  # (n, 2, 6)
    T = pose6_to_matrix(torch.cat(motion))  # (N-2, 2, 4, 4)
    step = torch.cat([torch.linalg.inv(T[:1, 0]), T[:, 1]])  # (N-1, 4, 4) motions i -> i+1
    poses = [torch.eye(4, dtype=torch.float64)]
    for r in torch.linalg.inv(step):  # camera i+1 in the frame of camera i
        poses.append(poses[-1] @ r)
    return torch.cat(depth), torch.stack(poses)

def garg_crop(hw):
    """The Eigen split's evaluation window (Garg et al. 2016), as fractions of the GT size (h, w), rounded
    down as in Monodepth2: rows 0.4081 h .. 0.9919 h, columns 0.0359 w .. 0.9641 w -> (h, w) bool."""
    h, w = hw
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = True
    return mask

def resize_as_disparity(depth, hw):
    """Prediction (1,1,H,W) -> depth at the GT size hw (h,w): bilinear on 1/depth, as KITTI evaluations
    (Monodepth2, SfMLearner) resize the network's disparity, then inverted."""
    return 1 / F.interpolate(1 / depth, size=hw, mode="bilinear", align_corners=False)[0, 0]

def evaluate(nets, seqs, args, device):
    """Depth metrics (unscaled and per-image median-scaled) on every frame with GT depth, at the GT's
    resolution (the prediction resized as disparity; GT in 0.001..--eval-cap m, inside --eval-crop),
    and SfMLearner's ATE on every 5-frame snippet with GT poses."""
    rows, rows_med, ratios, ates, ates_metric = [], [], [], [], []
    window = args.eval_crop or ("garg" if args.gt_depth else "none")  # by default: garg with --gt-depth
    for s in seqs:
        depth, poses = predict_sequence(nets, s["images"], device)
        for i in sorted(s["depth"]):
            gt = torch.from_numpy(gt_depth(s, i))
            pred = resize_as_disparity(depth[i:i + 1], gt.shape)
            crop = garg_crop(gt.shape) if window == "garg" else True
            m = (gt > 1e-3) & (gt < args.eval_cap) & crop
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

    def mean(rs):
        return {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} if rs else None
    return {"depth": mean(rows), "depth_median_scaled": mean(rows_med),
            "median_scale": float(np.median(ratios)) if ratios else None,
            "ate": float(np.mean(ates)) if ates else None, "ate_std": float(np.std(ates)) if ates else None,
            "ate_no_scale": float(np.mean(ates_metric)) if ates else None,
            "depth_frames": len(rows), "ate_snippets": len(ates)}

def summary(res, split, step):
    """evaluate's headline numbers as one log line."""
    d, m = res["depth"] or {}, res["depth_median_scaled"] or {}
    return f"{split} step {step}: " + common.format_record(
        {"abs_rel": d.get("abs_rel"), "abs_rel_median_scaled": m.get("abs_rel"), "a1": d.get("a1"),
         "scale_gt_pred": res["median_scale"], "ate": res["ate"], "ate_no_scale": res["ate_no_scale"]})

def validate(nets, data, args, device, step):
    """Periodic metrics on val/ if the data has one (val_*), else on the test split (test_*), flattened:
    {"depth": {"abs_rel": x}, "ate": y} -> {"val_depth/abs_rel": x, "val_ate": y}."""
    split = "val" if "val" in data else "test"
    res = evaluate(nets, data[split], args, device)
    common.log(summary(res, split, step))
    flat = {f"{split}_{k}": v for k, v in res.items() if v is not None and not isinstance(v, dict)}
    flat.update({f"{split}_{k}/{m}": x for k, v in res.items() if isinstance(v, dict) for m, x in v.items()})
    return flat


# ----------------------------------------------------------------------------------------------
# Training
def optimisers(nets, args):
    """Adam for DepthNet + PoseNet and for the two discriminators (betas 0.5, 0.999)."""
    G = [*nets["depth_net"].parameters(), *nets["pose_net"].parameters()]
    return {"G": torch.optim.Adam(G, lr=args.lr),
            "D": torch.optim.Adam([*nets["D_depth"].parameters(), *nets["D_motion"].parameters()],
                                  lr=args.lr_d or args.lr, betas=(0.5, 0.999))}

def training_set(data, args, device):
    """On the device: the training frames, their triplets (target t, sources t-1, t+1) with K, the memory
    in use and the paired subset (stretches of consecutive triplets whose GT depth and motions are used)."""
    train, hw = data["train"], (args.height, args.width)
    where = [(k, t) for k, s in enumerate(train) for t in range(1, len(s["images"]) - 1)]  # (sequence, t)
    start = np.cumsum([0] + [len(s["images"]) for s in train]).tolist()  # each sequence's first frame
    trip = [[start[k] + t, start[k] + t - 1, start[k] + t + 1] for k, t in where]  # target, t-1, t+1
    off = {"mem_depth": "motion", "mem_motion": "depth"}  # the memory --adv-on leaves out
    mem = {k: None if args.adv_on == off[k] else data[k] for k in off}
    if args.lambda_adv > 0 and mem["mem_depth"] is None and mem["mem_motion"] is None:
        want = {"both": "depth maps or poses.txt", "depth": "depth maps", "motion": "poses.txt"}[args.adv_on]
        raise InputError(f"--adv-on {args.adv_on} (--lambda-adv > 0): expected a memory with {want}, found "
                         "none: pass --memory DIR, another --adv-on, or --lambda-adv 0 (photometric only)")
    K = torch.tensor(np.array([train[k]["K"] for k, _ in where]), dtype=torch.float32)  # (T, 3, 3)
    out = {k: None if m is None else m.to(device) for k, m in mem.items()}
    out.update(images=torch.cat([s["images"] for s in train]).to(device), K=K.to(device),
               trip=torch.tensor(trip, device=device))
    if args.paired_frac == 0 or args.lambda_sup == 0:
        if args.lambda_rec == 0 and args.lambda_adv == 0:
            raise InputError("nothing to train: --lambda-rec and --lambda-adv are 0 and no frames are paired")
        return out
    # labelled as a lab labels video: stretches of STRETCH consecutive triplets, the first stretch of every
    # sequence, then the second, ...; the first round(frac * T) triplets in that order (nested fractions)
    order = sorted(range(len(trip)), key=lambda j: ((where[j][1] - 1) // STRETCH, where[j][0], where[j][1]))
    idx = np.array(order[:max(1, int(round(args.paired_frac * len(trip))))])
    gt_d, gt_pose = [], []
    for j in idx:
        s, t = train[where[j][0]], where[j][1]
        if t not in s["depth"] or s["poses"] is None:
            raise InputError(f"--paired-frac {args.paired_frac}: sequence {s['name']} frame {t} has no GT "
                             "depth map or poses.txt; paired frames need both")
        gt_d.append(gt_depth(s, t, hw))
        P = torch.from_numpy(s["poses"])
        gt_pose.append(matrix_to_pose6(torch.linalg.inv(P[[t - 1, t + 1]]) @ P[t]))  # target -> sources
    return dict(out, paired=torch.tensor(idx, device=device), gt_depth=torch.stack(gt_d).to(device),
                gt_pose=torch.stack(gt_pose).float().to(device))

def draw_batch(data, gen, args, dist):
    """The *global* batch drawn from one generator seeded alike on every rank; this rank keeps its
    slice (a run is the same at any world size and resumes exactly). Unpaired triplets come first."""
    B, dev = args.batch_size, data["trip"].device

    def draw(n):
        return torch.randint(n, (B * dist.world,), generator=gen)[dist.rank * B:(dist.rank + 1) * B].to(dev)
    ids, batch = [], {"n_paired": 0}
    if args.lambda_rec > 0 or args.lambda_adv > 0:
        ids.append(draw(len(data["trip"])))
    if "paired" in data:
        p = draw(len(data["paired"]))
        ids.append(data["paired"][p])
        batch.update(n_paired=len(p), gt_depth=data["gt_depth"][p], gt_pose=data["gt_pose"][p])
    ids = torch.cat(ids)
    frames = data["images"][data["trip"][ids]].float() / 255  # (b, 3, 3, H, W): target, t-1, t+1
    batch.update(target=frames[:, 0], sources=frames[:, 1:], K=data["K"][ids])
    for k in ("mem_depth", "mem_motion"):
        mem = data[k] if args.lambda_adv > 0 else None
        batch[k] = None if mem is None else mem[draw(len(mem))]
    return batch

def train_step(nets, opts, batch, args, dist, step):
    """One AIGN update: the discriminators first, then DepthNet + PoseNet against the updated ones."""
    tgt, srcs, K = batch["target"], batch["sources"], batch["K"]  # (b,3,H,W), (b,2,3,H,W), (b,3,3)
    n_un = len(tgt) - batch["n_paired"]  # the unpaired samples come first
    depth = nets["depth_net"](tgt)  # (b, 1, H, W) metres
    pose = nets["pose_net"](srcs[:, 0], tgt, srcs[:, 1])  # (b, 2, 6): t -> t-1, t -> t+1
    real_d, fake_d = batch["mem_depth"], depth[:n_un]  # (B,1,H,W) memory draws, (n_un,1,H,W) predictions
    if real_d is not None:  # memory gaps (0, --memory-gaps unknown): D sees both maps alike there, at max depth
        gap = real_d == 0
        real_d, fake_d = real_d.masked_fill(gap, args.max_depth), torch.where(gap, args.max_depth, fake_d)
    judged = [(D, real, fake) for D, real, fake in (  # (discriminator, memory samples, predictions)
        (nets["D_depth"], real_d, fake_d),
        (nets["D_motion"], batch["mem_motion"], pose[:n_un].flatten(1))) if real is not None]
    # L_G = lambda_rec l_rec(P(depth, motion), x) + lambda_adv adv(D(G(x))) [+ lambda_sup l_sup on pairs]:
    # (i) the renderer, (ii) the memory's discriminators, (iii) the pairs
    loss_d = loss_rec = loss_smooth = loss_adv = loss_sup = depth.new_zeros(())
    if judged:
        # (ii) the discriminators learn to tell the unpaired memory (real) from the predictions (fake)
        loss_d = sum(d_loss(D, real, fake.detach(), args.gan) for D, real, fake in judged)
        common.optimiser_step(opts["D"], loss_d, dist, nets["D_depth"], nets["D_motion"])
        # (ii) adversarial prior: predicted depth maps and motions must look like the memory's
        loss_adv = sum(g_adv_loss(D, fake, args.gan) for D, _, fake in judged)
    if args.lambda_rec > 0:
        # (i) renderer: P(depth, motion) applied to the neighbours must reproduce frame t
        loss_rec = reconstruction_loss(tgt, srcs, depth, pose, K)
        loss_smooth = smoothness(depth, tgt)  # edge-aware disparity smoothness (Monodepth's regulariser)
    if batch["n_paired"]:
        # (iii) paired supervision where labels exist
        loss_sup = supervised_loss(depth[n_un:], pose[n_un:], batch["gt_depth"], batch["gt_pose"])
    ramp = min(1.0, (step + 1) / max(args.adv_warmup, 1))  # the adversarial weight warms up from 0
    loss_g = args.lambda_rec * loss_rec + args.lambda_smooth * loss_smooth \
        + args.lambda_adv * ramp * loss_adv + args.lambda_sup * loss_sup
    common.optimiser_step(opts["G"], loss_g, dist, nets["depth_net"], nets["pose_net"])
    return {"loss_d": loss_d.item(), "loss_rec": loss_rec.item(), "loss_adv": loss_adv.item(),
            "loss_sup": loss_sup.item(), "loss_smooth": loss_smooth.item()}

def train(args, dist, data, nets, opts, state, run_dir):
    """D and G steps for --steps in total; every --eval-every steps: checkpoint, then validate."""
    gen = torch.Generator().manual_seed(args.seed)  # draws every batch, alike on all ranks
    start, wall_s, samples = 0, 0.0, 0
    if state is not None:
        start, wall_s, samples = common.restore_training(state, nets, opts, gen, args.resume)
    def finish(record):  # a record's validation metrics (validate logs them)
        record.update(validate(nets, data, args, dist.device, record["step"]))
        return record
    metrics = common.MetricsLog(run_dir, state, enabled=dist.main, finish=finish)
    stop, sums, n = common.StopRequest(), {}, 0
    t0 = time.perf_counter()
    for step in common.progress(start, args.steps, dist, args.no_progress):
        for k, v in train_step(nets, opts, draw_batch(data, gen, args, dist), args, dist, step).items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        done = step + 1
        stopping = dist.any(stop.requested)  # all ranks stop together
        if done % args.eval_every == 0 or done == args.steps or stopping:
            common.sync(dist.device)
            wall_s, samples = wall_s + time.perf_counter() - t0, samples + n * args.batch_size * dist.world
            common.stop_if_diverged(sums, done, dist, nets)  # NaN: one clear error, no bad checkpoint
            record = {"step": done, **{k: dist.mean(v / n) for k, v in sums.items()},
                      "wall_s": round(wall_s, 2)}
            if dist.main:  # the checkpoint first: an evaluation that fails loses no training
                common.save_checkpoint(os.path.join(run_dir, "ckpt.pt"), script=SCRIPT, step=done, args=args,
                                       nets=nets, opts=opts, data_rng=gen, wall_s=wall_s, samples=samples,
                                       record=record)
                metrics.write(finish(record))
            dist.barrier()
            sums, n, t0 = {}, 0, time.perf_counter()
            if stopping:
                common.log(f"stopped at step {done}; continue with --resume {run_dir}/ckpt.pt", dist)
                return None
    return {"steps": args.steps, "wall_s": round(wall_s, 2),
            "frames_per_s": round(samples / wall_s, 1) if wall_s > 0 else None}


# ----------------------------------------------------------------------------------------------
# Prediction
@torch.no_grad()
def predict(args, nets, device, run_dir):
    """--predict FOLDER (frames, or FOLDER/images/): depth maps as npy (metres, at the input size) and
    grey PNG, and the trajectory as KITTI poses (camera-to-first-frame) in poses.txt."""
    if not os.path.isdir(args.predict):
        raise InputError(f"--predict {args.predict}: no such folder (expected frames *.png|jpg, or "
                         "FOLDER/images/)")
    paths = list_files(args.predict) or list_files(os.path.join(args.predict, "images"))
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    count = collections.Counter(stems)
    if dup := [p for p, s in zip(paths, stems) if count[s] > 1]:  # outputs would overwrite each other
        raise InputError(f"--predict {args.predict}: frames {dup[:2]} share a name; expected one frame per name "
                         "(the outputs are depth/<name>.npy|png)")
    seq = make_sequence(f"--predict {args.predict}", paths, np.eye(3), "", (args.height, args.width))
    depth, poses = predict_sequence(nets, seq["images"], device)
    os.makedirs(os.path.join(run_dir, "depth"), exist_ok=True)
    for p, dm in zip(paths, depth):
        dm = resize_as_disparity(dm[None], seq["size"]).numpy()                   # as evaluate resizes it
        stem = os.path.join(run_dir, "depth", os.path.splitext(os.path.basename(p))[0])
        np.save(stem + ".npy", dm.astype(np.float32))
        v = np.log(args.max_depth / np.maximum(dm, 1e-3)) / np.log(args.max_depth / args.min_depth)
        common.write_png(stem + ".png", np.clip(v, 0, 1))  # grey log-depth on a fixed range: bright = near
    np.savetxt(os.path.join(run_dir, "poses.txt"), poses[:, :3].reshape(len(poses), 12).numpy(), fmt="%.6f")
    common.log(f"wrote {len(paths)} depth maps and poses.txt to {run_dir}")


# ----------------------------------------------------------------------------------------------
# Main
def report(nets, data, args, dist, run_dir, **extra):
    """The final test evaluation: results.json (+ extra, with the step or steps), the figures of
    tools/sfm_figures.py (depth_grid.png, trajectory.png), a log line."""
    res = evaluate(nets, data["test"], args, dist.device)
    common.write_json(os.path.join(run_dir, "results.json"), {**res, **extra})
    figures = common.optional_tool(__file__, "sfm_figures")  # diagnostics; a copied script has none
    if figures is None:
        common.log("figures skipped: tools/sfm_figures.py is not beside the script")
    else:
        figures.write_figures(sys.modules[__name__], run_dir, nets, data["test"], args, dist.device)
    common.log(summary(res, "test", extra.get("step", extra.get("steps"))))

def main(argv=None):
    args = get_args(argv)
    dist = common.Dist(args.device)
    state = common.load_checkpoint(args.resume, SCRIPT, nets=NETS) if args.resume else None
    if state is not None:
        common.resume_args(args, state, argv, ARCH, args.resume)
        args = common.checked_args(args, get_args, args.resume)
    common.seed_everything(args.seed, args.deterministic)  # same seed on every rank: same init
    run_dir = common.make_run_dir(args, SCRIPT, dist)  # eval-only/predict get their own folder
    nets = build_nets(args, dist.device)
    if args.predict or args.eval_only:
        for k in ("depth_net", "pose_net"):
            common.load_weights(nets[k], state["nets"][k], args.resume, k)
    if args.predict:
        if dist.main:
            predict(args, nets, dist.device, run_dir)
        return
    data = load_data(args, dist)
    if args.eval_only:
        if dist.main:
            report(nets, data, args, dist, run_dir, eval_only=True, checkpoint=args.resume,
                   step=state["step"])
        return
    data.update(training_set(data, args, dist.device))
    if data["mem_motion"] is not None:
        nets["D_motion"].set_memory(data["mem_motion"])
    n = {k: len(data.get(k) if data.get(k) is not None else []) for k in
         ("train", "val", "test", "trip", "paired", "mem_depth", "mem_motion")}
    common.log(f"train: {n['train']} sequences, {n['trip']} triplets ({n['paired']} paired); val: "
               f"{n['val']}, test: {n['test']} sequences; memory: {n['mem_depth']} depth maps, "
               f"{n['mem_motion']} motions; {dist.world} process(es) on {dist.device}", dist)
    opts = optimisers(nets, args)
    stats = train(args, dist, data, nets, opts, state, run_dir)
    if stats is not None and dist.main:
        report(nets, data, args, dist, run_dir, **stats, world=dist.world, device=str(dist.device))


if __name__ == "__main__":
    common.run_main(main)
