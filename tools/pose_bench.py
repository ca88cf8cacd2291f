"""Run pose_aign.py over seeds and write the README tables (mean ± std), or time its train_step.

    python3 tools/pose_bench.py                      # the ablations x 3 seeds -> bench/pose/table.md
    python3 tools/pose_bench.py --curve              # label efficiency -> bench/pose_curve/curve.md + .png
    python3 tools/pose_bench.py --curve --steps 1000 # the same curve at fewer steps (say so beside it)
    python3 tools/pose_bench.py --curve --fractions 0.05 0.1 --seeds 0   # some of its runs (resumable)
    python3 tools/pose_bench.py --throughput [-- --device cuda --batch-size 1024]   # -> bench.json

Each run is `python3 pose_aign.py <flags> --seed S --out <OUT>/<config>-s<S>`; a finished run
(results.json present) is not run again, so the command can be interrupted and restarted. A setting
that trains on a variant build (BUILDS: e.g. `tools/pose_builtin.py --overhead 2`) gets `--data
<OUT>/data-<variant>`, built first. After a run, its checkpoint is evaluated on the default built-in
validation and test splits apart (the same splits for every setting): the synthetic subjects ('synth')
and the real CMU stretch ('cmu'), into breakdown.json; the tables show both (val: the numbers settings
were chosen on; test: the ones reported).
--curve: paired fractions 1, 2, 5, 10, 100% x {supervised-only, AIGN + the same pairs}.
--throughput imports pose_aign, builds its data, nets and optimisers as a training run does, and
times train_step from outside: samples/s, ms per step (one D and one G update), GFLOP per step
(torch's flop counter) and the fraction of the measured fp32 matmul peak of the same device.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUP = ["--lambda-rec", "0", "--lambda-adv", "0"]
CONFIGS = [  # (name, flags): the ablations of the issue, all on the built-in data
    ("supervised-only, 5% paired", SUP + ["--paired-frac", "0.05"]),
    ("reprojection-only (no prior)", ["--lambda-adv", "0"]),
    ("AIGN, unpaired, no tilt prior", ["--tilt-prior", "none"]),
    ("AIGN, unpaired, camera-frame lift", ["--lift-frame", "camera"]),
    ("AIGN, unpaired (default)", []),
    ("AIGN, unpaired, previous default build (no overhead clips)", []),
    ("AIGN + 5% paired", ["--paired-frac", "0.05"]),
    ("supervised, 100% paired (bound)", SUP + ["--paired-frac", "1"]),
    ("AIGN + synthetic pairs: all, overhead + wide build", ["--paired-frac", "1"]),
    ("supervised-only, same synthetic pairs", SUP + ["--paired-frac", "1"]),
]
# Settings trained on a variant build, name -> its tools/pose_builtin.py build options: the default build
# before issue 13's eighth session (data/pose_s8/RULE.md), and the seventh session's every synthetic training
# frame labelled (data/pose_s7/RULE.md).
BUILDS = {"AIGN, unpaired, previous default build (no overhead clips)": {"overhead": 0},
          "AIGN + synthetic pairs: all, overhead + wide build": {"overhead": 2, "wide": 8},
          "supervised-only, same synthetic pairs": {"overhead": 2, "wide": 8}}
FRACTIONS = [0.01, 0.02, 0.05, 0.1, 1.0]
CURVE = [(f"{kind} {100 * f:g}%", (SUP if kind == "supervised-only" else []) + ["--paired-frac", str(f)])
         for f in FRACTIONS for kind in ("supervised-only", "AIGN + pairs")]


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def breakdown(out, device):
    """The run's G on the built-in val and test splits: synthetic subjects vs the real CMU stretch."""
    sys.path.insert(0, ROOT)
    import common
    import pose_aign as P
    torch = P.torch
    state = common.load_checkpoint(os.path.join(out, "ckpt.pt"), P.SCRIPT, nets=("G", "D"))
    a = P.get_args(["--device", device])
    state["args"].setdefault("lift_frame", "camera")  # checkpoints from before --lift-frame
    common.arch_from_checkpoint(a, state, P.ARCH, out)
    G = P.build_nets(a, torch.device(device))["G"]
    common.load_weights(G, state["nets"]["G"], out, "G")
    data, res = P.load_data(a, common.Dist(device)), {}
    for role in ("val", "test"):
        split = data[role]
        pred, _, _ = P.predict(G, split, a, torch.device(device))
        gt = torch.as_tensor(split["y3d"] - split["y3d"][:, :1])
        errs = {"mpjpe": P.mpjpe(pred, gt), "p_mpjpe": P.p_mpjpe(pred, gt)}
        for part, rows in (("synth", split["action"] != "cmu"), ("cmu", split["action"] == "cmu"),
                           ("all", np.ones(len(split["action"]), bool))):
            for k, v in errs.items():
                res[f"{role}_{part}_{k}"] = float(v[torch.as_tensor(rows)].mean())
    common.write_json(os.path.join(out, "breakdown.json"), res)


def variant_data(args, build):
    """The folder of a variant build (tools/pose_builtin.py build(**build)) under --out, built once."""
    folder = os.path.join(args.out, "data-" + "-".join(f"{k}{v}" for k, v in sorted(build.items())))
    if not os.path.exists(os.path.join(folder, "memory.npz")):
        sys.path.insert(0, ROOT)
        from tools import pose_builtin
        pose_builtin.build(folder + ".tmp", **build)
        os.replace(folder + ".tmp", folder)
    return folder


def run_one(cfg, seed, args):
    name, flags = cfg
    out = os.path.join(args.out, f"{slug(name)}-s{seed}")
    if name in BUILDS:
        flags = ["--data", variant_data(args, BUILDS[name]), *flags]
    if not os.path.exists(os.path.join(out, "results.json")):
        steps = ["--steps", str(args.steps), "--eval-every", str(args.steps)] if args.steps else []
        cmd = [sys.executable, "pose_aign.py", *flags, *steps, "--seed", str(seed), "--out", out, "--no-progress",
               "--device", args.device, *args.extra]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "stdout.log"), "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    if not os.path.exists(os.path.join(out, "breakdown.json")):
        breakdown(out, "cpu" if args.device == "auto" else args.device)


def load(args, name):
    runs = []
    for s in args.seeds:
        out = os.path.join(args.out, f"{slug(name)}-s{s}")
        if os.path.exists(os.path.join(out, "breakdown.json")):
            with open(os.path.join(out, "results.json")) as f, open(os.path.join(out, "breakdown.json")) as g:
                run = {**json.load(f), **json.load(g)}
                # the whole default test split (results.json holds the run's own --data test split)
                run.update({k: run.get(f"test_all_{k}", run[k]) for k in ("mpjpe", "p_mpjpe")})
                runs.append(run)
    return runs


def cell(runs, key, digits=1):
    v = [r[key] for r in runs]
    return f"{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f}"


def note(args, n_runs, t0):
    v = {}
    path = next((os.path.join(args.out, d, "versions.json") for d in sorted(os.listdir(args.out))
                 if os.path.exists(os.path.join(args.out, d, "versions.json"))), None)
    if path:
        with open(path) as f:
            v = json.load(f)
    steps = f"{args.steps} steps per run (fewer than the default 3000)" if args.steps else "default 3000 steps"
    return (f"\n\nSeeds {' '.join(map(str, args.seeds))}, built-in val/test splits, millimetres; {steps}; {n_runs} runs, "
            f"{args.jobs} at a time with {args.threads} thread(s) each, on {platform.processor() or platform.machine()} "
            f"({os.cpu_count()} cores), torch {v.get('torch', '?')}, device {args.device}; this invocation "
            f"{time.time() - t0:.0f} s. Command: `python3 {' '.join(sys.argv)}`.")


def table(args, t0):
    rows = ["| setting | flags | test synth P-MPJPE | test CMU P-MPJPE | test MPJPE / P-MPJPE | val synth / CMU "
            "P-MPJPE | wall s / run |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, flags in CONFIGS:
        r = load(args, name)
        if r:
            ratio = [x["mpjpe"] / x["p_mpjpe"] for x in r]
            build = " ".join(f"--{k} {v}" for k, v in sorted(BUILDS.get(name, {}).items()))
            flags = (f"built with `{build}`: " if build else "") + f"`{' '.join(flags) or '(none)'}`"
            rows.append(f"| {name} | {flags} | {cell(r, 'test_synth_p_mpjpe')} | "
                        f"{cell(r, 'test_cmu_p_mpjpe')} | {np.mean(ratio):.2f} ({cell(r, 'mpjpe', 0)} / "
                        f"{cell(r, 'p_mpjpe', 0)}) | {np.mean([x['val_synth_p_mpjpe'] for x in r]):.1f} / "
                        f"{np.mean([x['val_cmu_p_mpjpe'] for x in r]):.1f} | "
                        f"{np.mean([x['wall_s'] for x in r]):.0f} |")
    return "\n".join(rows) + note(args, (len(rows) - 2) * len(args.seeds), t0)


def plot(path, series, xs, size=(300, 460)):
    """A raster line plot without text (the README caption says what it shows): x = log paired
    fraction, y = P-MPJPE from 0 mm; grey grid lines at each fraction and every 20 mm; per series
    (rgb, means, stds) a line through the means, 5x5 markers and ±std bars."""
    h, w = size
    img = np.ones((h, w, 3))
    top = 1.1 * max(m + s for _, ms, ss in series for m, s in zip(ms, ss))
    lx = np.log10(xs)

    def to_px(x, y):
        return int(round(20 + (x - lx[0]) / (lx[-1] - lx[0]) * (w - 40))), int(round(h - 20 - y / top * (h - 40)))
    for x in lx:
        img[20:h - 20, to_px(x, 0)[0]] = 0.8
    for y in np.arange(0, top, 20.0):
        img[to_px(lx[0], y)[1], 20:w - 20] = 0.8
    for rgb, means, stds in series:
        t = np.linspace(lx[0], lx[-1], 4 * w)
        for c, r in (to_px(x, y) for x, y in zip(t, np.interp(t, lx, means))):
            img[r - 1:r + 1, c] = rgb
        for x, m, s in zip(lx, means, stds):
            c, r = to_px(x, m)
            img[r - 2:r + 3, c - 2:c + 3] = rgb
            img[to_px(x, m + s)[1]:to_px(x, m - s)[1] + 1, c - 1:c + 1] = rgb
    sys.path.insert(0, ROOT)
    import common
    common.write_png(path, img)


def curve(args, t0):
    rows = ["| paired | supervised-only P-MPJPE | AIGN + pairs P-MPJPE | ratio | supervised-only CMU | AIGN + pairs "
            "CMU | val ratio | wall s / run (sup, AIGN) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    xs, series, n_runs = [], {"sup": ([], []), "aign": ([], [])}, 0
    for f in FRACTIONS:
        sup, aign = load(args, f"supervised-only {100 * f:g}%"), load(args, f"AIGN + pairs {100 * f:g}%")
        if not sup or not aign:
            continue
        n_runs += len(sup) + len(aign)
        m = {k: np.mean([r["p_mpjpe"] for r in rs]) for k, rs in (("sup", sup), ("aign", aign))}
        val = np.mean([r["val_synth_p_mpjpe"] for r in aign]) / np.mean([r["val_synth_p_mpjpe"] for r in sup])
        rows.append(f"| {100 * f:g}% | {cell(sup, 'p_mpjpe')} | {cell(aign, 'p_mpjpe')} | {m['aign'] / m['sup']:.2f} | "
                    f"{cell(sup, 'test_cmu_p_mpjpe')} | {cell(aign, 'test_cmu_p_mpjpe')} | {val:.2f} | "
                    f"{np.mean([r['wall_s'] for r in sup]):.0f}, {np.mean([r['wall_s'] for r in aign]):.0f} |")
        xs.append(f)
        for k, rs in (("sup", sup), ("aign", aign)):
            series[k][0].append(float(m[k]))
            series[k][1].append(float(np.std([r["p_mpjpe"] for r in rs])))
    text = ("\n".join(rows) + "\n\nP-MPJPE on the whole built-in test split (synthetic + CMU frames); ratio = AIGN / "
            "supervised (means); val ratio: the same on the validation split's synthetic frames."
            + note(args, n_runs, t0))
    if len(xs) >= 2:
        plot(os.path.join(args.out, "curve.png"), [((0.1, 0.3, 0.8), *series["sup"]),
                                                    ((0.85, 0.1, 0.1), *series["aign"])], np.array(xs))
        text += " Plot curve.png: x = paired fraction (log), y = test P-MPJPE from 0 (grid: 20 mm); blue " \
                "supervised-only, red AIGN + pairs, bars ±1 std over seeds."
    return text


def throughput(args):
    """Time pose_aign.train_step (after warm-up) on the built-in data or the extra flags' --data."""
    sys.path.insert(0, ROOT)
    import common
    import pose_aign as P
    from tools import bench_util
    torch = P.torch
    torch.set_num_threads(args.threads)
    a = P.get_args(["--device", args.device, *args.extra])
    dist = common.Dist(a.device)
    common.seed_everything(a.seed)
    nets = P.build_nets(a, dist.device)
    data = P.load_data(a, dist)
    data["train_set"] = P.training_set(a, data, dist.device)
    opts = {k: torch.optim.Adam(m.parameters(), lr=a.lr, betas=(0.5, 0.999)) for k, m in nets.items()}
    gen = torch.Generator().manual_seed(a.seed)

    def step():
        return P.train_step(nets, opts, P.draw_batch(data, gen, a, dist), a, dist, 0)

    dt = bench_util.time_per_call(step, dist.device, reps=args.reps, warmup=5)
    flops = bench_util.count_flops(step)
    peak = bench_util.matmul_peak(dist.device)
    res = {"device": str(dist.device), "batch_size": a.batch_size, "world": dist.world,
           "step_ms": round(1000 * dt, 2), "samples_per_s": round(a.batch_size * dist.world / dt, 1),
           "gflop_per_step": round(flops / 1e9, 3), "achieved_gflops": round(flops / dt / 1e9, 1),
           "matmul_peak_gflops": round(peak / 1e9, 1), "fraction_of_peak": round(flops / dt / peak, 3),
           "timed_steps": args.reps, "command": " ".join(sys.argv), **common.versions()}
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, "bench.json"), res)
    print(json.dumps(res, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    p.add_argument("--device", default="cpu", help="device of each run (default: cpu)")
    p.add_argument("--steps", type=int, default=None, help="--steps (and --eval-every) of each run "
                   "(default: the script's 3000)")
    p.add_argument("--out", default=None, help="folder of the runs (default: bench/pose, bench/pose_curve)")
    p.add_argument("--curve", action="store_true", help="the label-efficiency curve: supervised-only vs AIGN + "
                   "pairs at paired fractions 1, 2, 5, 10, 100%% -> OUT/curve.md + curve.png (default: off)")
    p.add_argument("--fractions", type=float, nargs="+", default=None, help="--curve: run only these paired "
                   "fractions (e.g. 0.05 0.1; the table shows every fraction whose runs exist; default: all)")
    p.add_argument("--configs", nargs="+", default=None, help="run only these settings of the ablation table, "
                   "by slug (e.g. aign-unpaired-default; default: all)")
    p.add_argument("--table-only", action="store_true", help="only collect the finished runs (default: off)")
    p.add_argument("--throughput", action="store_true",
                   help="time pose_aign.train_step instead; writes <--out>/bench.json (default: off)")
    p.add_argument("--reps", type=int, default=30, help="timed steps of --throughput (default: 30)")
    p.add_argument("extra", nargs="*", help="extra flags for every run (or for --throughput), after --")
    args = p.parse_args()
    args.out = args.out or os.path.join(ROOT, "bench", "pose_curve" if args.curve else "pose")
    if args.throughput:
        return throughput(args)
    t0 = time.time()
    configs = ([c for c in CURVE if args.fractions is None or float(c[1][-1]) in args.fractions] if args.curve
               else [c for c in CONFIGS if args.configs is None or slug(c[0]) in args.configs])
    if not args.table_only:
        jobs = [(cfg, s) for s in args.seeds for cfg in configs]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda js: run_one(*js, args), jobs))
    text = curve(args, t0) if args.curve else table(args, t0)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "curve.md" if args.curve else "table.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
