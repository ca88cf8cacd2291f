"""The built-in dataset of sfm_aign.py: procedural driving-like streets rendered by a small ray
caster in torch, written in sfm_aign.py's ordinary --data format (generic sequence folders:
images/, depth/, poses.txt, intrinsics.txt; train/, memory/, val/ and test/ roles, disjoint by
sequence), so the built-in run goes
through the same loader as user data. sfm_aign.py calls build(folder) on first use through
common.builtin_dataset (cached as $AIGN_CACHE/sfm/builtin-<hash of this file>, default ~/.cache/aign);
this file never imports sfm_aign.py. By hand: python3 tools/sfm_builtin.py OUT_DIR
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

# The built-in dataset: procedural streets rendered by a small ray caster, stored in the generic
# layout (so it goes through the same loader as user data) at twice the default training size.
BUILTIN = dict(version=1, height=96, width=320, frames=60, train=10, memory=6, test=3, val=3)
ROLES = (("train", 0), ("memory", 1000), ("test", 2000), ("val", 3000))  # role, seed offset
GROUND = 1.65  # camera height above the road, metres (KITTI's); camera y points down


def builtin_K(h, w):
    """KITTI-like intrinsics at image size (h, w): fx = fy = 0.58 w, principal point at the centre."""
    return np.array([[0.58 * w, 0, (w - 1) / 2], [0, 0.58 * w, (h - 1) / 2], [0, 0, 1]])


def hash01(*ints):
    """Integer lattice -> pseudo-random values in [0, 1); deterministic on every device."""
    h = torch.zeros_like(ints[0])
    for k, v in zip((73856093, 19349663, 83492791), ints):
        h = (h ^ (v * k)) % 2147483647 * 48271 % 2147483647  # no int64 overflow
    return (h % 65521).float() / 65521.0


def value_noise(a, b, scale, seed):
    """Smooth 2D value noise with lattice spacing `scale` metres."""
    a, b = a / scale, b / scale
    ia, ib = torch.floor(a), torch.floor(b)
    fa, fb = a - ia, b - ib
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)
    ia, ib = ia.long(), ib.long()
    s = ia * 0 + seed  # int or per-pixel seeds
    n = [hash01(ia + i, ib + j, s) for j in (0, 1) for i in (0, 1)]
    return (n[0] * (1 - fa) + n[1] * fa) * (1 - fb) + (n[2] * (1 - fa) + n[3] * fa) * fb


def texture(kind, a, b, seed):
    """Surface albedo factor at surface coordinates (a, b) metres: 0 noise, 1 bricks, 2 windows."""
    fbm = 0.5 * value_noise(a, b, 2.0, seed) + 0.3 * value_noise(a, b, 0.5, seed + 1) \
        + 0.2 * value_noise(a, b, 0.15, seed + 2)
    row = torch.floor(b / 0.3)
    col = torch.floor(a / 0.6 + 0.5 * (row % 2))
    mortar = ((b / 0.3 - row) < 0.15) | ((a / 0.6 + 0.5 * (row % 2) - col) < 0.08)
    brick = torch.where(mortar, torch.full_like(a, 0.35),
                        0.7 + 0.3 * hash01(col.long(), row.long(), seed + 4))
    wa, wb = (a / 2.5) % 1, (b / 3.0) % 1
    window = (wa > 0.25) & (wa < 0.75) & (wb > 0.2) & (wb < 0.7)
    windows = torch.where(window, 0.25 + 0.2 * value_noise(a, b, 0.3, seed + 3), 0.6 + 0.4 * fbm)
    out = torch.where(kind == 1, brick * (0.8 + 0.2 * fbm), 0.55 + 0.45 * fbm)
    return torch.where(kind == 2, windows, out)


def street_scene(rng, length):
    """Axis-aligned boxes (x0 y0 z0 x1 y1 z1 texture r g b seed): facades, a far row, cars."""
    boxes = []
    for side in (-1, 1):
        for near, depth_x, gap in ((True, 8.0, 0.2), (False, 6.0, 0.0)):
            z = -30.0
            while z < length:
                L = rng.uniform(6, 22)
                if rng.random() >= gap:  # a gap shows the far row behind
                    front = rng.uniform(5.5, 11) if near else rng.uniform(24, 30)
                    h = rng.uniform(4, 16) if near else rng.uniform(15, 25)
                    x0, x1 = (front, front + depth_x) if side > 0 else (-front - depth_x, -front)
                    boxes.append([x0, GROUND - h, z, x1, GROUND, z + L, rng.integers(3),
                                  *rng.uniform(0.3, 1.0, 3), rng.integers(1 << 20)])
                z += L
    for _ in range(int(length / 8)):  # parked cars
        side, zc = rng.choice([-1, 1]), rng.uniform(0, length)
        xc = side * rng.uniform(3.0, 4.5)
        boxes.append([xc - 0.9, GROUND - 1.5, zc - 2.1, xc + 0.9, GROUND, zc + 2.1, 0,
                      *rng.uniform(0.1, 1.0, 3), rng.integers(1 << 20)])
    return torch.tensor(boxes, dtype=torch.float64)


def camera_path(rng, n):
    """Camera-to-world poses (n,4,4): mostly forward, gentle turns, small pitch/roll/bob."""
    speed = rng.uniform(0.7, 1.3)
    z = np.cumsum(speed * rng.uniform(0.9, 1.1, n)) - speed
    amp, period, phase = rng.uniform(0.3, 1.8), rng.uniform(30, 70), rng.uniform(0, 2 * np.pi)
    x = amp * np.sin(2 * np.pi * z / period + phase)
    yaw = np.arctan(amp * 2 * np.pi / period * np.cos(2 * np.pi * z / period + phase)) \
        + rng.uniform(-0.03, 0.03) + 0.01 * np.sin(np.arange(n) / 3.0)
    pitch = 0.02 * np.sin(np.arange(n) / 5.0 + rng.uniform(0, 6))
    roll = 0.015 * np.sin(np.arange(n) / 7.0 + rng.uniform(0, 6))
    P = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        cy, sy, cp, sp, cr, sr = (np.cos(yaw[i]), np.sin(yaw[i]), np.cos(pitch[i]), np.sin(pitch[i]),
                                  np.cos(roll[i]), np.sin(roll[i]))
        Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        P[i, :3, :3] = Ry @ Rx @ Rz
        P[i, :3, 3] = [x[i], 0.03 * np.sin(i / 2.0), z[i]]
    return P


def render_view(boxes, c2w, K, h, w):
    """Ray-cast one view: image (3,h,w) in [0,1] and depth (h,w) in metres along the optical
    axis (0 = sky). Rays are K^-1 [u,v,1] rotated to the world, so the ray parameter IS the depth."""
    c2w, K = torch.as_tensor(c2w).to(boxes), torch.as_tensor(K).to(boxes)
    v, u = torch.meshgrid(torch.arange(h).to(boxes), torch.arange(w).to(boxes), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)]).reshape(3, -1)
    d = (c2w[:3, :3] @ torch.linalg.inv(K) @ pix).T  # (N,3)
    o = c2w[:3, 3]
    near = boxes[(boxes[:, 5] > o[2] - 20) & (boxes[:, 2] < o[2] + 200)]
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1 = (near[None, :, 0:3] - o) * inv[:, None]  # (N, M, 3) slab entry/exit parameters
    t2 = (near[None, :, 3:6] - o) * inv[:, None]
    tmin, axis = torch.minimum(t1, t2).max(-1)  # entry parameter and the face's axis
    tmax = torch.maximum(t1, t2).min(-1).values
    tmin = torch.where((tmax >= tmin) & (tmin > 1e-3), tmin, torch.full_like(tmin, float("inf")))
    t_box, m = tmin.min(-1)  # (N,)
    axis = axis.gather(1, m[:, None])[:, 0]
    t_gnd = torch.where(d[:, 1] > 1e-9, (GROUND - o[1]) / d[:, 1], torch.full_like(t_box, float("inf")))
    t = torch.minimum(t_box, t_gnd)
    p = o + t.clamp(max=1e4)[:, None] * d  # (N,3) hit points
    b = near[m]
    on_ground = t_gnd <= t_box
    axis = torch.where(on_ground, torch.ones_like(axis), axis)
    a_coord = torch.where(axis == 0, p[:, 2], p[:, 0])
    b_coord = torch.where(axis == 1, p[:, 2], p[:, 1])
    kind = torch.where(on_ground, torch.zeros_like(axis), b[:, 6].long())
    seed = torch.where(on_ground, torch.full_like(axis, 7), b[:, 10].long())
    albedo = texture(kind, a_coord, b_coord, seed.long())[:, None] * b[:, 7:10]
    road = 0.35 + 0.25 * (0.6 * value_noise(p[:, 0], p[:, 2], 0.4, 11)
                          + 0.4 * value_noise(p[:, 0], p[:, 2], 0.1, 12))
    lane = (p[:, 0].abs() < 0.1) & ((p[:, 2] % 6) < 3)
    road = torch.where(lane, torch.full_like(road, 0.95), road)[:, None].expand(-1, 3)
    shade = torch.tensor([0.8, 1.0, 0.65]).to(boxes)[axis][:, None]  # fixed directional light
    color = torch.where(on_ground[:, None], road * 0.9, albedo * shade)
    dn = d / d.norm(dim=1, keepdim=True)  # sky: a function of the ray direction only (infinitely far)
    sky = torch.stack([0.55 - 0.3 * dn[:, 1], 0.7 - 0.2 * dn[:, 1], 0.95 - 0.05 * dn[:, 1]], 1) \
        + 0.1 * value_noise(dn[:, 0] * 20, dn[:, 1] * 20, 1.0, 5)[:, None]
    hit = torch.isfinite(t)
    color = torch.where(hit[:, None], color, sky).clamp(0, 1)
    return color.T.reshape(3, h, w).float().cpu(), torch.where(hit, t, 0).reshape(h, w).float().cpu()


def write_sequence(folder, boxes, poses, K, h, w):
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "depth"), exist_ok=True)
    for i, P in enumerate(poses):
        img, depth = render_view(boxes, P, K, h, w)
        img = (np.clip(img.permute(1, 2, 0).numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)  # float32 rounding
        common.write_png(os.path.join(folder, "images", f"{i:06d}.png"), img)  # as version 1 wrote it
        np.save(os.path.join(folder, "depth", f"{i:06d}.npy"), depth.numpy())
    np.savetxt(os.path.join(folder, "poses.txt"), poses[:, :3].reshape(len(poses), 12), fmt="%.9f")
    np.savetxt(os.path.join(folder, "intrinsics.txt"), K[[0, 1, 0, 1], [0, 1, 2, 2]][None], fmt="%.6f")


def build(out_dir, device="cpu"):
    """Render the built-in dataset into out_dir: train/, memory/, test/ and val/ hold disjoint sequences
    (own seeds) in the generic layout; val/ (added in issue 12) leaves the other three byte-identical.
    Deterministic (fixed seeds); rendered on `device` (about 12 s per sequence on a CPU core, well
    under one on a GPU)."""
    cfg = BUILTIN
    common.log(f"building the built-in dataset in {out_dir} (once; {sum(cfg[r] for r, _ in ROLES)} "
               f"sequences of {cfg['frames']} frames at {cfg['height']}x{cfg['width']})")
    K = builtin_K(cfg["height"], cfg["width"])
    for role, offset in ROLES:
        for i in range(cfg[role]):
            rng = np.random.default_rng(offset + i)
            poses = camera_path(rng, cfg["frames"])
            boxes = street_scene(rng, poses[-1, 2, 3] + 40).to(torch.device(device))
            write_sequence(os.path.join(out_dir, role, f"{role}_{i:02d}"), boxes, poses, K,
                           cfg["height"], cfg["width"])
    return out_dir


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", default="sfm_builtin", help="folder to write (default: sfm_builtin)")
    build(p.parse_args().out)
