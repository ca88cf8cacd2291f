"""The figures of an sfm_aign.py run (diagnostics, written beside results.json when tools/ is present):

    depth_grid.png   4 fixed test frames, one a row: frame | predicted depth | GT depth | the next frame
                     warped into this one by the predicted depth and motion | photometric error
    trajectory.png   top view (x right, z up) of the first test sequence with poses: GT in black, the
                     chained predicted motions (no scale fit) in red

sfm_aign.py calls write_figures(sfm_aign module, ...) after its final test evaluation; a copied script
without tools/ skips them. Depth colours: depth_color below (fixed log scale, bright = near).
"""
import os

import numpy as np
import torch

CMAP = np.array([[0.0, 0.0, 0.02], [0.23, 0.06, 0.44], [0.55, 0.16, 0.5], [0.87, 0.29, 0.4],
                 [0.99, 0.6, 0.36], [0.99, 0.99, 0.75]])  # depth colours: dark (far) -> bright (near)


def colorize(v):
    """(H,W) values in [0,1] -> (H,W,3) colours by piecewise-linear interpolation of CMAP."""
    v = np.clip(np.asarray(v, dtype=np.float64), 0, 1) * (len(CMAP) - 1)
    i = np.minimum(np.floor(v).astype(int), len(CMAP) - 2)
    return CMAP[i] * (1 - (v - i)[..., None]) + CMAP[i + 1] * (v - i)[..., None]


def depth_color(d, args):
    """Log-depth colours on a fixed range (comparable across steps and runs); 0 = invalid -> black."""
    d = np.asarray(d, dtype=np.float64)
    v = np.log(args.max_depth / np.maximum(d, 1e-3)) / np.log(args.max_depth / args.min_depth)
    return np.where(d[..., None] > 0, colorize(v), 0.0)


@torch.no_grad()
def write_figures(S, run_dir, nets, test, args, device, n=4, size=320):
    """S: the calling sfm_aign module (its renderer, losses and common). depth_grid.png: n frames
    of the first test sequence with GT depth, one a row: frame | predicted depth | GT | warped next frame |
    photometric error; trajectory.png: top view (x right, z up) of the first test sequence with poses, GT
    in black, the chained predictions (no scale fit) in red."""
    seq, rows, hw = next((s for s in test if s["depth"]), test[0]), [], (args.height, args.width)
    K = torch.as_tensor(seq["K"], dtype=torch.float32, device=device)[None]
    for i in np.linspace(1, len(seq["images"]) - 2, n).round().astype(int):
        prev, tgt, nxt = (seq["images"][j:j + 1].to(device).float() / 255 for j in (i - 1, i, i + 1))
        depth = nets["depth_net"](tgt)  # (1, 1, H, W)
        warped, valid = S.inverse_warp(nxt, depth, nets["pose_net"](prev, tgt, nxt)[:, 1], K)
        err = (S.photometric_error(warped, tgt) * valid)[0, 0].cpu().numpy()
        gt = S.gt_depth(seq, i, hw)[0].numpy() if i in seq["depth"] else np.zeros(hw)
        rows.append([tgt[0].cpu(), depth_color(depth[0, 0].cpu().numpy(), args), depth_color(gt, args),
                     (warped * valid)[0].cpu(), colorize(err / 0.5)])
    S.common.write_png(os.path.join(run_dir, "depth_grid.png"), S.common.image_grid(rows))
    seq = next((s for s in test if s["poses"] is not None), None)
    if seq is None:
        return
    paths = [(np.linalg.inv(seq["poses"][0]) @ seq["poses"])[:, :3, 3],  # (N, 3) each: GT, predicted
             S.predict_sequence(nets, seq["images"], device)[1][:, :3, 3].numpy()]
    pts = np.concatenate(paths)[:, [0, 2]]
    centre, span = (pts.min(0) + pts.max(0)) / 2, max(np.ptp(pts, 0).max(), 1e-6)  # one scale for x, z
    img = np.ones((size, size, 3))
    for xyz, color in zip(paths, ((0, 0, 0), (0.85, 0.1, 0.1))):
        t = np.linspace(0, len(xyz) - 1, 8 * size)  # dense samples along the path: a line of 3x3 dots
        q = np.stack([np.interp(t, np.arange(len(xyz)), xyz[:, c]) for c in (0, 2)], 1)
        for x, y in ((q - centre) / span * (size - 32) + size / 2).round().astype(int):
            img[size - 2 - y:size + 1 - y, x - 1:x + 2] = color
    S.common.write_png(os.path.join(run_dir, "trajectory.png"), img)
