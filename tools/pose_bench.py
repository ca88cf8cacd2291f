"""Run the pose_aign.py ablations over seeds and write the table (mean ± std), or time its train_step.

    python3 tools/pose_bench.py                      # 6 configs x 3 seeds, 2 runs at a time
    python3 tools/pose_bench.py --jobs 16 --threads 1 --write-readme
    python3 tools/pose_bench.py --throughput [-- --device cuda --batch-size 1024]   # -> bench.json

Each run is `python3 pose_aign.py <flags> --seed S --out bench/pose/<config>-s<S>`; a finished run
(results.json present) is not run again, so the command can be interrupted and restarted.
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
CONFIGS = [  # (name, flags): the ablations of the issue, all on the built-in data
    ("supervised-only, 5% paired", ["--lambda-rec", "0", "--lambda-adv", "0", "--paired-frac", "0.05"]),
    ("reprojection-only (no prior)", ["--lambda-adv", "0"]),
    ("AIGN, unpaired (default)", []),
    ("AIGN + 5% paired", ["--paired-frac", "0.05"]),
    ("AIGN, unpaired, LSGAN", ["--gan", "lsgan", "--lambda-adv", "0.2"]),
    ("supervised, 100% paired (bound)", ["--lambda-rec", "0", "--lambda-adv", "0", "--paired-frac", "1"]),
]


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_one(cfg, seed, args):
    name, flags = cfg
    out = os.path.join(args.out, f"{slug(name)}-s{seed}")
    if os.path.exists(os.path.join(out, "results.json")):
        return
    cmd = [sys.executable, "pose_aign.py", *flags, "--seed", str(seed), "--out", out, "--no-progress",
           "--device", args.device, *args.extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "stdout.log"), "w") as log:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def table(args):
    rows = ["| setting | flags | MPJPE | P-MPJPE | N-MPJPE | wall s / run |", "| --- | --- | --- | --- | --- | --- |"]
    for name, flags in CONFIGS:
        res = [json.load(open(os.path.join(args.out, f"{slug(name)}-s{s}", "results.json"))) for s in args.seeds]
        cell = lambda k: f"{np.mean([r[k] for r in res]):.1f} ± {np.std([r[k] for r in res]):.1f}"
        rows.append(f"| {name} | `{' '.join(flags) or '(none)'}` | {cell('mpjpe')} | {cell('p_mpjpe')} | "
                    f"{cell('n_mpjpe')} | {np.mean([r.get('wall_s', r.get('wall_seconds')) for r in res]):.0f} |")
    return "\n".join(rows)


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
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    p.add_argument("--device", default="cpu", help="device of each run (default: cpu)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "pose"), help="folder of the runs (default: bench/pose)")
    p.add_argument("--throughput", action="store_true",
                   help="time pose_aign.train_step instead; writes <--out>/bench.json (default: off)")
    p.add_argument("--reps", type=int, default=30, help="timed steps of --throughput (default: 30)")
    p.add_argument("extra", nargs="*", help="extra flags for every run (or for --throughput), after --")
    args = p.parse_args()
    if args.throughput:
        return throughput(args)
    t0 = time.time()
    jobs = [(cfg, s) for cfg in CONFIGS for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda js: run_one(*js, args), jobs))
    md = table(args)
    note = (f"\n\n{len(args.seeds)} seeds ({' '.join(map(str, args.seeds))}), built-in test split, millimetres; "
            f"{len(jobs)} runs, {args.jobs} at a time with {args.threads} thread(s) each, on "
            f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), device {args.device}; "
            f"whole table {time.time() - t0:.0f} s. Command: `python3 tools/pose_bench.py --jobs {args.jobs} "
            f"--threads {args.threads}`.")
    print(md + note)
    with open(os.path.join(args.out, "table.md"), "w") as f:  # the README's table is copied from here
        f.write(md + note + "\n")


if __name__ == "__main__":
    main()
