"""Where pose_aign.py's error comes from: MPJPE vs P-MPJPE decomposed, and which poses fail.

    python3 tools/pose_errors.py RUN_DIR [RUN_DIR ...] [--split val] [--data DIR] [--out FILE.md]

For each run's checkpoint, on one split (default: the validation split; the built-in data when no
--data), per action and overall, in millimetres:
  MPJPE (root-aligned), N-MPJPE (+ the least-squares scale), R (+ the best rotation about the root,
  no scale), R+s (rotation and scale about the root), P-MPJPE (+ translation: the centroid; the
  paper's metric), tilt / yaw / roll only (MPJPE after undoing only that Euler angle of the root
  rotation, camera axes x right, y down, z forward: R = Rz(roll) Ry(yaw) Rx(tilt)), the mean
  absolute angles (degrees), the signed error of the body's elevation (pelvis->thorax in the camera's
  y-z plane), the share of bones whose depth order is flipped (|true depth step| > 5 cm), and the
  scale: predicted / true bone-length sum (mean and std), and MPJPE after scaling each prediction to
  the memory's median bone lengths (least squares; a fix that was tried, not one the script applies),
  the same after the best rotation too (R, memory bones: ideal rotation with the best size estimate
  the data allow, the memory's), and the ground truth itself scaled to the memory's bones (what a
  perfect pose of unknown size would still score).
  Then one line: the signed elevation error regressed on the person's angle below the optical axis
  (an error that follows it means G ignores where in the image the person is: see --lift-frame).
  With --joints also each joint's error after P-MPJPE's alignment and the thighs' / upper arms' angle to the
  trunk, per action. With --coverage also, on the real CMU frames, P-MPJPE by quartile of each frame's distance to the nearest training pose (body frame) and
  of the highest wrist's height above the head.
It only evaluates (no training); choose settings on the validation split, report test only as a
diagnosis after the choices are fixed.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import pose_aign as P  # noqa: E402

torch = P.torch
COLS = ["action", "n", "MPJPE", "N-MPJPE", "R", "R+s", "P-MPJPE", "MPJPE/P", "tilt only", "yaw only",
        "roll only", "abs tilt/yaw/roll deg", "elevation err deg", "depth flips %", "size pred/true",
        "MPJPE, memory bones", "R, memory bones", "truth, memory bones"]


def rotation_about_root(pred, gt):
    """The proper rotation R (N,3,3) with pred @ R^T closest to gt (both root-relative, (N,17,3))."""
    U, _, Vh = torch.linalg.svd(gt.transpose(1, 2) @ pred)
    d = torch.sign(torch.linalg.det(U @ Vh))
    return U @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ Vh


def axis_rotation(axis, rad):
    """(N,) angles about camera axis 0 (x), 1 (y) or 2 (z) -> (N,3,3)."""
    c, s, o, z = rad.cos(), rad.sin(), torch.ones_like(rad), torch.zeros_like(rad)
    m = {0: [o, z, z, z, c, -s, z, s, c], 1: [c, z, s, z, o, z, -s, z, c], 2: [c, -s, z, s, c, z, z, z, o]}
    return torch.stack(m[axis], -1).view(-1, 3, 3)


def decompose(pred, gt, bones=None):
    """Per-frame columns (dict of (N,) arrays) for pred, gt (N,17,3) root-relative metres, float64;
    bones (16,): reference bone lengths (the memory's medians) for the 'memory bones' column."""
    err = lambda q: 1000 * (q - gt).norm(dim=-1).mean(-1)  # noqa: E731
    s = (pred * gt).sum((1, 2)) / pred.pow(2).sum((1, 2)).clamp_min(1e-12)
    R = rotation_about_root(pred, gt)
    rs = R @ pred.transpose(1, 2)
    s_r = (rs.transpose(1, 2) * gt).sum((1, 2)) / pred.pow(2).sum((1, 2)).clamp_min(1e-12)
    angles = [torch.atan2(R[:, 2, 1], R[:, 2, 2]), torch.asin((-R[:, 2, 0]).clamp(-1, 1)),
              torch.atan2(R[:, 1, 0], R[:, 0, 0])]                                  # tilt, yaw, roll
    up = lambda q: torch.atan2(q[:, 8, 2] - q[:, 0, 2], q[:, 0, 1] - q[:, 8, 1])    # noqa: E731
    par = torch.tensor(P.PARENTS[1:])
    dz_p, dz_g = pred[:, 1:, 2] - pred[:, par, 2], gt[:, 1:, 2] - gt[:, par, 2]    # (N,16)
    big = dz_g.abs() > 0.05
    size = lambda q: (q[:, 1:] - q[:, par]).norm(dim=-1).sum(-1)                   # noqa: E731
    out = {"MPJPE": err(pred), "N-MPJPE": err(s[:, None, None] * pred), "R": err(rs.transpose(1, 2)),
           "R+s": err(s_r[:, None, None] * rs.transpose(1, 2)),
           "P-MPJPE": P.p_mpjpe(pred.float(), gt.float()).double()}
    for i, name in enumerate(("tilt only", "yaw only", "roll only")):
        out[name] = err(pred @ axis_rotation(i, angles[i]).transpose(1, 2))
    out.update({"tilt": angles[0].abs(), "yaw": angles[1].abs(), "roll": angles[2].abs(),
                "elevation": up(pred) - up(gt),
                "flips": 100 * ((torch.sign(dz_p) != torch.sign(dz_g)) & big).sum(1) / big.sum(1).clamp_min(1),
                "size": size(pred) / size(gt)})
    if bones is not None:  # each pose scaled so that its bone lengths best match `bones` (least squares)
        k = lambda q: (lambda lq: (lq * bones).sum(-1) / lq.pow(2).sum(-1).clamp_min(1e-12))(  # noqa: E731
            (q[:, 1:] - q[:, par]).norm(dim=-1))[:, None, None]                         # (N,1,1)
        out.update({"bones": err(k(pred) * pred), "R bones": err(k(pred) * rs.transpose(1, 2)),
                    "truth bones": err(k(gt) * gt)})
    return {k: v.numpy() for k, v in out.items()}


def table_rows(cols, action):
    rows = []
    for name in ["all"] + sorted(set(action)):
        r = np.ones(len(action), bool) if name == "all" else action == name
        m = {k: v[r].mean() for k, v in cols.items()}
        deg = [np.degrees(m[k]) for k in ("tilt", "yaw", "roll")]
        rows.append([name, str(r.sum())] + [f"{m[k]:.1f}" for k in ("MPJPE", "N-MPJPE", "R", "R+s", "P-MPJPE")]
                    + [f"{m['MPJPE'] / m['P-MPJPE']:.2f}"] + [f"{m[k]:.1f}" for k in ("tilt only", "yaw only",
                                                                                       "roll only")]
                    + ["/".join(f"{d:.1f}" for d in deg), f"{np.degrees(m['elevation']):+.1f}",
                       f"{m['flips']:.1f}", f"{m['size']:.3f} ± {cols['size'][r].std():.3f}",
                       *[f"{m[k]:.1f}" if k in m else "-" for k in ("bones", "R bones", "truth bones")]])
    return rows


def off_axis(split, cols):
    """One line: the signed elevation error against the pelvis's angle below the optical axis (phi =
    atan(Y/Z) of the true root; > 0: below the image centre), least-squares line, lying clips left out."""
    phi = np.degrees(np.arctan2(split["y3d"][:, 0, 1], split["y3d"][:, 0, 2]))
    err, ok = np.degrees(cols["elevation"]), split["action"] != "lying"
    slope, icpt = np.polyfit(phi[ok], err[ok], 1)
    g = split["y3d"] - split["y3d"][:, :1]
    up = np.degrees(np.arctan2(g[:, 8, 2], -g[:, 8, 1]))[ok]  # the true body elevation (as 'elevation err')
    q = np.digitize(up, np.quantile(up, [0.25, 0.5, 0.75]))
    return (f"- elevation error vs the pelvis's angle below the optical axis phi (not lying): slope {slope:+.2f} "
            f"deg/deg, intercept {icpt:+.2f} deg; mean phi {phi.mean():+.2f} deg, mean error {err.mean():+.2f} deg\n"
            f"- elevation error by quartile of the true body elevation (not lying; mean true -> mean error, deg): "
            + ", ".join(f"{up[q == b].mean():+.1f} -> {err[ok][q == b].mean():+.1f}" for b in range(4)))


def coverage(split, train, pose, p):
    """Markdown lines: P-MPJPE on the real CMU frames by quartile of two pose features."""
    canon = lambda q: P.canonicalise(torch.as_tensor(q - q[:, :1])).numpy()        # noqa: E731
    c = split["action"] == "cmu"
    if not c.any():
        return []
    q, ref = canon(split["y3d"][c]), canon(train["y3d"][::4])
    nn = np.concatenate([1000 * np.linalg.norm(q[i:i + 128, None] - ref[None], axis=-1).mean(-1).min(1)
                         for i in range(0, len(q), 128)])
    wrist = np.maximum(q[:, 13, 1], q[:, 16, 1]) - q[:, 10, 1]
    lines = []
    for name, f in (("nearest training pose, mm", nn), ("highest wrist above the head, m", wrist)):
        bins = np.digitize(f, np.quantile(f, [0.25, 0.5, 0.75]))
        lines.append(f"- CMU frames by {name} (quartiles: mean feature -> P-MPJPE): " + ", ".join(
            f"{f[bins == b].mean():.2f} -> {p[c][bins == b].mean():.1f}" for b in range(4)))
    return lines


def joint_table(pred, gt, action):
    """Markdown rows per action: each joint's error after P-MPJPE's alignment (mm), and the mean angles of
    the thighs and upper arms to the trunk's downward direction (deg, both sides), predicted / true."""
    err = 1000 * (P.procrustes_align(pred, gt) - gt).norm(dim=-1).numpy()              # (N,17)
    unit = lambda v: v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)                  # noqa: E731

    def angle(q, a, b):  # (N,) deg: bones a->b and a+3->b+3 (right and left) against pelvis <- thorax
        down = unit(q[:, 0] - q[:, 8])
        return np.mean([np.degrees(np.arccos((unit(q[:, b + k] - q[:, a + k]) * down).sum(-1).clamp(-1, 1).numpy()))
                        for k in (0, 3)], 0)
    hip, arm = [angle(q, 1, 2) for q in (pred, gt)], [angle(q, 11, 12) for q in (pred, gt)]
    nj = len(P.JOINTS)
    rows = ["| action | " + " | ".join(P.JOINTS) + " | thigh pred / true | upper arm pred / true |",
            "|" + " --- |" * (nj + 3)]
    for a in ["all"] + sorted(set(action)):
        r = np.ones(len(action), bool) if a == "all" else action == a
        rows.append(f"| {a} | " + " | ".join(f"{err[r, j].mean():.0f}" for j in range(nj)) + f" | "
                    f"{hip[0][r].mean():.0f} / {hip[1][r].mean():.0f} | {arm[0][r].mean():.0f} / {arm[1][r].mean():.0f} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders holding ckpt.pt")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"], help="split (default: val)")
    ap.add_argument("--data", default=None, help="--data of pose_aign.py (default: the built-in data)")
    ap.add_argument("--coverage", action="store_true", help="also the CMU-frame coverage lines (default: off)")
    ap.add_argument("--joints", action="store_true", help="also per-joint errors after alignment and the "
                    "thigh / upper-arm angles to the trunk, per action (default: off)")
    ap.add_argument("--out", default=None, help="also write the markdown here (default: print only)")
    args = ap.parse_args()
    text = []
    for run in args.runs:
        path = os.path.join(run, "ckpt.pt")
        state = common.load_checkpoint(path, P.SCRIPT, nets=("G", "D"))
        a = P.get_args(["--device", "cpu"] + (["--data", args.data] if args.data else []))
        state["args"].setdefault("lift_frame", "camera")  # checkpoints from before --lift-frame
        common.arch_from_checkpoint(a, state, P.ARCH, path)
        G = P.build_nets(a, torch.device("cpu"))["G"]
        common.load_weights(G, state["nets"]["G"], path, "G")
        data = P.load_data(a, common.Dist("cpu"))
        split = data[args.split]
        if split is None or split["y3d"] is None:
            raise SystemExit(f"error: {run}: the data have no {args.split} split with poses_3d")
        pred = P.predict(G, split, a, torch.device("cpu"))[0]
        mem = None if data["memory"] is None else torch.as_tensor(data["memory"]).double()
        bones = None if mem is None else (mem[:, 1:] - mem[:, P.PARENTS[1:]]).norm(dim=-1).median(0).values
        cols = decompose(pred.double(), torch.as_tensor(split["y3d"] - split["y3d"][:, :1]).double(), bones)
        text += [f"\n{run} (step {state['step']}), {args.split} split:\n", "| " + " | ".join(COLS) + " |",
                 "|" + " --- |" * len(COLS)]
        text += ["| " + " | ".join(r) + " |" for r in table_rows(cols, split["action"])]
        text += ["", off_axis(split, cols)]
        if args.coverage:
            text += [""] + coverage(split, data["train"], pred, cols["P-MPJPE"])
        if args.joints:
            text += [""] + joint_table(pred, torch.as_tensor(split["y3d"] - split["y3d"][:, :1]), split["action"])
    text = "\n".join(text) + f"\n\nCommand: `python3 tools/pose_errors.py {' '.join(sys.argv[1:])}`\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
