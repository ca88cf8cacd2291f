"""The figures of pose_aign.py runs, drawn with numpy (no plotting library): samples.png and
turntable.gif of a run, predictions.png of --predict. The script loads this file when it sits in
tools/ beside it; a copied script without it skips the figures (one log line). It never imports the
script: the skeleton below is the script's H36M-17 (PARENTS, left and right limbs)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15]
LEFT, RIGHT = [4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]
COLOURS = {"l": (40, 100, 230), "r": (225, 60, 40), "c": (70, 70, 70)}  # left limbs, right limbs, spine


def draw_skeleton(canvas, pts, alpha=1.0, radius=1):
    """Rasterise a skeleton, pts (17,2) pixels, into canvas (H,W,3) uint8 in place: discs along each bone."""
    H, W, _ = canvas.shape
    r = range(-radius, radius + 1)
    disc = np.array([(dx, dy) for dy in r for dx in r if dx * dx + dy * dy <= radius * radius + 1])  # (k,2)
    for j in (j for j in range(1, len(PARENTS)) if np.isfinite(pts[[PARENTS[j], j]]).all()):
        a, b = pts[PARENTS[j]], pts[j]
        seg = a + np.linspace(0, 1, int(np.ceil(np.abs(b - a).max())) * 2 + 2)[:, None] * (b - a)   # (n,2)
        x, y = np.round(seg[:, None] + disc).astype(int).reshape(-1, 2).T
        ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
        colour = np.array(COLOURS["l" if j in LEFT else "r" if j in RIGHT else "c"], float)
        canvas[y[ok], x[ok]] = (alpha * colour + (1 - alpha) * canvas[y[ok], x[ok]]).astype(np.uint8)
    return canvas


def view3d(pose, size=160, yaw=0.0, extent=2.2, ghost=None):
    """A pose (17,3) seen orthographically, turned `yaw` degrees about the camera's y (90: from the side)."""
    c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
    canvas = np.full((size, size, 3), 255, np.uint8)
    canvas[size - 1, :] = canvas[:, 0] = 200
    for p, alpha in ((ghost, 0.3), (pose, 1.0)):
        if p is not None:
            q = (p - p[0]) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T                     # (17,3)
            draw_skeleton(canvas, q[:, :2] * size / extent + size / 2, alpha, radius=1 if alpha < 1 else 2)
    return canvas


def view2d(x2d, size=160):
    """The 2D input (17,2), fitted into the panel."""
    lo, hi = np.nanmin(x2d, 0), np.nanmax(x2d, 0)
    pts = (x2d - (lo + hi) / 2) * 0.8 * size / max((hi - lo).max(), 1e-6) + size / 2
    return draw_skeleton(np.full((size, size, 3), 255, np.uint8), pts, radius=2)


def samples(out_dir, split, lift, n=6):
    """samples.png: one row per sample of n spread over the split (the script's split dict): input 2D |
    prediction lift(sub) (n,17,3) (camera, side) | ground truth or none (camera, side); turntable.gif:
    the first prediction turning around, the ground truth as a ghost."""
    idx = np.linspace(0, len(split["x2d"]) - 1, n).astype(int)
    sub = {k: split[k] if split[k] is None else split[k][idx] for k in ("x2d", "cam", "dist", "y3d")}
    x2d, pred = sub["x2d"], lift(sub)
    gt = [None] * len(pred) if sub["y3d"] is None else sub["y3d"] - sub["y3d"][:, :1]     # (n,17,3)
    rows = [[view2d(x), view3d(p), view3d(p, yaw=90)] + ([] if g is None else [view3d(g), view3d(g, yaw=90)])
            for x, p, g in zip(x2d, pred, gt)]
    common.write_png(os.path.join(out_dir, "samples.png"), common.image_grid(rows))
    frames = [view3d(pred[0], size=256, yaw=yaw, ghost=gt[0]) for yaw in range(0, 360, 10)]
    common.write_gif(os.path.join(out_dir, "turntable.gif"), frames, fps=12)


def predictions(path, x2d, rel):
    """predictions.png: input 2D (n,17,2) | lifted root-relative pose (n,17,3) (camera, side)."""
    rows = [[view2d(x), view3d(r), view3d(r, yaw=90)] for x, r in zip(x2d, rel)]
    common.write_png(path, common.image_grid(rows))
