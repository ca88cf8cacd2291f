"""A copy of an sfm_aign.py dataset whose memory depth maps look like LiDAR: sparse scan lines, no returns above.

Real memories are rarely dense: KITTI's depth maps are projected Velodyne scans (no return above the horizon or
between scan lines; 0 = no return), while the built-in streets render dense maps whose 0 is the sky. This
writes DST with train/, val/, test/ linked to SRC's and memory/ rewritten: each depth map keeps every
--line-every-th row below the top --top share of the image, and each pixel of a kept row with probability
--keep (seeded per map), all else 0. It measures what --memory-gaps does with a sparse memory (docs/sfm.md).

    python3 tools/sfm_lidar_memory.py $AIGN_CACHE/sfm/builtin-<hash> /tmp/sparse
    python3 sfm_aign.py --data /tmp/sparse --memory-gaps unknown
"""
import argparse
import glob
import os
import shutil

import numpy as np


def sparsify(depth, rng, top=0.35, line_every=2, keep=0.5):
    """(h, w) metres, 0 = none -> the same with only LiDAR-like scan lines kept."""
    h = depth.shape[0]
    rows = np.zeros(depth.shape, bool)
    rows[int(round(top * h))::line_every] = True                                # scan lines below the top
    return np.where(rows & (rng.random(depth.shape) < keep), depth, 0).astype(depth.dtype)


def build(src, dst, top=0.35, line_every=2, keep=0.5):
    """Returns (maps written, the share of their pixels with depth)."""
    if not os.path.isdir(os.path.join(src, "memory")):
        raise SystemExit(f"{src}: no memory/ folder (expected an sfm_aign.py dataset with train/, test/, memory/)")
    os.makedirs(dst, exist_ok=True)
    for role in ("train", "val", "test"):
        if os.path.isdir(os.path.join(src, role)) and not os.path.exists(os.path.join(dst, role)):
            os.symlink(os.path.abspath(os.path.join(src, role)), os.path.join(dst, role))
    maps, valid = 0, []
    for seq in sorted(glob.glob(os.path.join(src, "memory", "*"))):
        out = os.path.join(dst, "memory", os.path.basename(seq))
        os.makedirs(os.path.join(out, "depth"), exist_ok=True)
        for f in ("poses.txt", "intrinsics.txt"):
            if os.path.isfile(os.path.join(seq, f)):
                shutil.copy(os.path.join(seq, f), out)
        for f in sorted(glob.glob(os.path.join(seq, "depth", "*.npy"))):
            d = sparsify(np.load(f), np.random.default_rng(maps), top, line_every, keep)
            np.save(os.path.join(out, "depth", os.path.basename(f)), d)
            maps, valid = maps + 1, valid + [float((d > 0).mean())]
    return maps, float(np.mean(valid)) if valid else 0.0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="an sfm_aign.py dataset folder (train/, test/, memory/ of .npy depth maps)")
    p.add_argument("dst", help="folder to write")
    p.add_argument("--top", type=float, default=0.35, help="share of rows at the top without returns (default: 0.35)")
    p.add_argument("--line-every", type=int, default=2, help="keep every Nth row below it (default: 2)")
    p.add_argument("--keep", type=float, default=0.5, help="share of a kept row's pixels (default: 0.5)")
    a = p.parse_args()
    n, density = build(a.src, a.dst, a.top, a.line_every, a.keep)
    print(f"wrote {n} memory depth maps to {a.dst}/memory, {density:.1%} of their pixels with depth")
