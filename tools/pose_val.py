"""Validation read-out of pose_aign.py runs, the numbers candidate settings are chosen by:

    python3 tools/pose_val.py RUN_DIR [RUN_DIR ...] [--data DIR ...] [--out FILE.md]

For each run's G (its ckpt.pt) on the validation split, P-MPJPE (mm) on the real CMU stretch (action
'cmu'), on the synthetic frames of the default build's actions (frame mean; the frames of clip kinds a
variant build adds are left out of it and shown in their own column), and MPJPE / P-MPJPE over the
whole split. `--data` (one per run, or one for all) is the run's --data when it was not the built-in
data. Only the validation split is read: no test number is computed. `--drop-joints K` hides K random 2D
joints of every validation frame (seed 0, the same for every run), as a detector misses joints.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import pose_aign as P  # noqa: E402

DEFAULT_ACTIONS = ["walk", "run", "sit", "squat", "wave", "bend", "reach", "fitted", "lying"]


def readout(run, data=None, drop=0):
    """{column: mm} of one run on its validation split (with `drop` random joints of each frame hidden)."""
    state = common.load_checkpoint(os.path.join(run, "ckpt.pt"), P.SCRIPT, nets=("G", "D"))
    a = P.get_args(["--device", "cpu"] + (["--data", data] if data else []))
    common.arch_from_checkpoint(a, state, P.ARCH, run)
    G = P.build_nets(a, P.torch.device("cpu"))["G"]
    common.load_weights(G, state["nets"]["G"], run, "G")
    split = P.load_data(a, common.Dist("cpu"))["val"]
    if split is None or split["y3d"] is None:
        raise common.InputError(f"{run}: its data have no validation split with poses_3d")
    if drop:
        rng = np.random.default_rng(0)
        hidden = np.argsort(rng.random((len(split["x2d"]), P.NJ)), 1)[:, :drop]          # (N,drop) joints
        split = {**split, "x2d": split["x2d"].copy()}
        np.put_along_axis(split["x2d"], hidden[..., None], np.nan, 1)
    pred = P.predict(G, split, a, P.torch.device("cpu"))[0]
    return columns(pred, P.torch.as_tensor(split["y3d"] - split["y3d"][:, :1]), split["action"])


def columns(pred, gt, action):
    """Root-relative predictions and truth (N,17,3), actions (N,) -> {column: mm}: P-MPJPE frame means over
    the CMU frames, the default actions' frames and each other kind's, MPJPE / P-MPJPE over all frames."""
    pm, mp = P.p_mpjpe(pred, gt).numpy(), P.mpjpe(pred, gt).numpy()
    out = {"CMU stretch": pm[action == "cmu"].mean(), "synthetic (default actions)":
           pm[np.isin(action, DEFAULT_ACTIONS)].mean(), "all MPJPE": mp.mean(), "all P-MPJPE": pm.mean()}
    for k in sorted(set(action) - set(DEFAULT_ACTIONS) - {"cmu"}):
        out[f"new kind: {k}"] = pm[action == k].mean()
    return {k: float(v) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders holding ckpt.pt")
    ap.add_argument("--data", nargs="+", default=None, help="--data of the runs: one per run or one for all; "
                    "'-' = the built-in data (default: the built-in data)")
    ap.add_argument("--out", default=None, help="also write the markdown here (default: print only)")
    ap.add_argument("--drop-joints", type=int, default=0, help="hide this many random 2D joints of each frame "
                    "(default: 0)")
    a = ap.parse_args()
    data = a.data or ["-"]
    if len(data) not in (1, len(a.runs)):
        raise common.InputError(f"--data: {len(data)} values for {len(a.runs)} runs; expected 1 or "
                                f"{len(a.runs)}")
    data = [None if d == "-" else d for d in (data * len(a.runs) if len(data) == 1 else data)]
    rows = [(run, readout(run, d, a.drop_joints)) for run, d in zip(a.runs, data)]
    extra = sorted({k for _, r in rows for k in r if k.startswith("new kind")})
    cols = ["CMU stretch", "synthetic (default actions)", "all MPJPE", "all P-MPJPE"] + extra
    lines = ["| run (validation, P-MPJPE mm) | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    lines += [f"| {os.path.basename(os.path.normpath(run))} | "
              + " | ".join(f"{r[c]:.1f}" if c in r else "-" for c in cols) + " |" for run, r in rows]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    common.run_main(main)
