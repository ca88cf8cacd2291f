"""Run the sfm_aign.py ablations over seeds and write the README table (mean ± std).

    python3 tools/sfm_bench.py                       # 4 ablations x 3 seeds, 2 runs at a time
    python3 tools/sfm_bench.py --parallel 12 --device cuda
    python3 tools/sfm_bench.py --table-only          # only re-collect bench/sfm/*/results.json
    python3 tools/sfm_bench.py --validation     # into bench/sfm_val: model selection, never the test split
    python3 tools/sfm_bench.py --throughput [-- SFM_AIGN_FLAGS]  # renderer and train_step timings -> bench.json
    python3 tools/sfm_bench.py --curve [--steps N]   # label-efficiency curve -> bench/sfm_curve/curve.md+png
    python3 tools/sfm_bench.py --busy                # step time idle vs beside a busy process -> busy.md

--curve runs supervised only (--lambda-rec 0 --lambda-adv 0) and AIGN + pairs at --paired-frac 0.01,
0.02, 0.05, 0.1, 1 (the same stretches of frames for both rows), and writes the 3-seed means, the
relative gain 1 - AIGN/supervised in unscaled abs_rel, and curve.png (x: log fraction 1..100%, y:
abs_rel from 0, one light line every 0.1; blue supervised only, red AIGN + pairs, bars +-1 std).
--steps N (any mode) also sets --adv-warmup N/4, the default's share (500 of 2000).
--busy needs the whole machine (nothing else running but the neighbour it starts itself).

--validation runs the prior candidates (PRIORS, or those named by --configs) on the built-in data and
tabulates the final val_* record of each run's metrics.jsonl: the built-in val/ sequences (disjoint
from train/, memory/ and test/; the split settings are chosen on). Before issue 12 the built-in data
had no val/ and this mode held out train_08, train_09 instead (data/sfm/validation.md).
--configs NAME ... runs (and tabulates) only those rows: of ABLATIONS and PRIORS (either mode; the mode
picks the split of the table), or of CURVE with --curve.

Each run is a plain `python3 sfm_aign.py ...` with its own run folder under --out; the table is
printed and written to OUT/table.md (with the hardware and the wall time per run).

--throughput imports sfm_aign and times it from outside (what `sfm_aign.py --bench` printed before),
after the allocator setting every run makes (common.keep_freed_memory): the renderer's forward + backward
on 2x batch frames with a dense upstream gradient (Mpix/s, ms) beside a plain copy of the same tensors
(copy: its inputs source + depth, as before issue 12's fourth session; copy_io: its inputs and outputs
source, depth, warped, valid), beside grid_sample's forward + backward alone (the floor), both again
with cold caches (a 64 MB buffer rewritten before every call), and train_step (training frames/s, ms
per step, GFLOP per step, fraction of the fp32 matmul peak measured alike), each as wall time and as
process CPU time (*_cpu: leaves out the time other processes hold the core), plus page faults per
renderer call and per step, on the data and flags given after `--` (default: the built-in data), into
OUT/bench.json (default OUT: bench/sfm_throughput).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABLATIONS = [  # (name, description, flags)
    ("photo", "photometric only (SfMLearner/Monodepth-style)", ["--lambda-adv", "0"]),
    ("sup5", "supervised only, 5% paired", ["--lambda-rec", "0", "--lambda-adv", "0", "--paired-frac", "0.05"]),
    ("aign", "AIGN (unpaired memory; the default: depth memory)", []),
    ("aign_sup5", "AIGN + 5% paired", ["--paired-frac", "0.05"]),
]

PRIORS = [  # --validation: which prior helps structure (chosen on val/, never on test)
    ("photo", "photometric only", ["--lambda-adv", "0"]),
    ("both", "AIGN, depth + motion memory", ["--adv-on", "both"]),
    ("depth", "AIGN, depth memory only", ["--adv-on", "depth"]),
    ("both_norm", "AIGN, both memories, D_depth sees normalised log-depth",
     ["--adv-on", "both", "--d-input", "normalised"]),
    ("motion", "AIGN, motion memory only", ["--adv-on", "motion"]),
    ("depth_warm1000", "AIGN, depth memory only, warm-up 1000", ["--adv-on", "depth", "--adv-warmup", "1000"]),
    ("depth_adv0.003", "AIGN, depth memory only, lambda-adv 0.003",
     ["--adv-on", "depth", "--lambda-adv", "0.003"]),
]

FRACTIONS = (0.01, 0.02, 0.05, 0.1, 1.0)  # --curve: the label-efficiency curve's paired fractions
CURVE = [row for f in FRACTIONS for row in (
    (f"sup{f:g}", f"supervised only, {100 * f:g}% paired",
     ["--lambda-rec", "0", "--lambda-adv", "0", "--paired-frac", str(f)]),
    (f"aign{f:g}", f"AIGN + {100 * f:g}% paired", ["--paired-frac", str(f)]))]


def timed(fn, reps=10, blocks=5, cold=None):
    """Median over blocks of the per-call time of fn(), as (wall s, process CPU s); CPU time leaves out the
    time other processes hold the core (the readings to compare on a shared machine). cold: a buffer
    rewritten before every call (evicts the caches), each call then timed alone."""
    walls, cpus = [], []
    fn()
    for _ in range(blocks):
        w = c = 0.0
        for _ in range(reps if cold is not None else 1):
            if cold is not None:
                cold.fill_(1.0)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(1 if cold is not None else reps):
                fn()
            w, c = w + time.perf_counter() - w0, c + time.process_time() - c0
        walls.append(w / reps)
        cpus.append(c / reps)
    return float(np.median(walls)), float(np.median(cpus))


def minor_faults():
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except ImportError:  # not a Unix system
        return 0


def throughput(args):
    """Time the renderer and train_step of sfm_aign from outside, on its own data pipeline, after the same
    allocator setting as sfm_aign.main (common.keep_freed_memory, in common.Dist)."""
    sys.path.insert(0, ROOT)
    import torch
    import torch.nn.functional as F
    import common
    import sfm_aign as S
    from tools import bench_util
    a = S.get_args(["--device", args.device, *args.extra])
    dist = common.Dist(a.device)
    dev, B, (H, W) = dist.device, 2 * a.batch_size, (a.height, a.width)
    common.seed_everything(a.seed)
    data = S.load_data(a, dist)
    data.update(S.training_set(data, a, dev))
    nets = S.build_nets(a, dev)
    if data["mem_motion"] is not None:
        nets["D_motion"].set_memory(data["mem_motion"])
    opts = S.optimisers(nets, a)
    src = torch.rand(B, 3, H, W, device=dev)
    depth = (5 + 10 * torch.rand(B, 1, H, W, device=dev)).requires_grad_(True)
    pose = (0.05 * torch.randn(B, 6, device=dev)).requires_grad_(True)
    K = torch.tensor(data["K"][0].tolist(), device=dev).expand(B, 3, 3)
    g_out = torch.rand(B, 3, H, W, device=dev)  # a dense upstream gradient, as the loss gives
    out0 = [t.detach() for t in S.inverse_warp(src, depth, pose, K)]  # (warped, valid): the outputs

    def warp():
        S.inverse_warp(src, depth, pose, K)[0].backward(g_out)
        depth.grad = pose.grad = None
    grid = (2 * torch.rand(B, H, W, 2, device=dev) - 1).requires_grad_(True)  # sampling alone: the floor
    flush = torch.empty(16 << 20, device=dev)  # 64 MB, rewritten before each "cold" call
    f0 = minor_faults()
    t = {"warp": timed(warp, reps=20)}
    faults_warp = (minor_faults() - f0) / (20 * 5 + 1)
    t.update(copy_in=timed(lambda: (src.clone(), depth.detach().clone()), reps=20),
             copy_io=timed(lambda: [x.clone() for x in (src, depth.detach(), *out0)], reps=20),
             grid_sample=timed(lambda: F.grid_sample(src, grid, align_corners=True).backward(g_out), reps=20),
             warp_cold=timed(warp, cold=flush),
             copy_io_cold=timed(lambda: [x.clone() for x in (src, depth.detach(), *out0)], cold=flush))
    gen = torch.Generator().manual_seed(a.seed)

    def step():
        return S.train_step(nets, opts, S.draw_batch(data, gen, a, dist), a, dist, a.steps)
    flops = bench_util.count_flops(step)
    n = 1024 if dev.type == "cpu" else 4096
    x, y = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    f0 = minor_faults()
    t["step"] = timed(step, reps=5)
    faults_step = (minor_faults() - f0) / (5 * 5 + 1)

    def matmul():
        x @ y
        common.sync(dev)
    t["matmul"] = timed(matmul, reps=10)
    peak = [2 * n ** 3 / s for s in t["matmul"]]  # (wall, CPU) FLOP/s
    w, c = 0, 1  # the two readings of every timed() pair
    out = {"renderer_mpix_per_s": B * H * W / t["warp"][w] / 1e6, "renderer_ms": 1e3 * t["warp"][w],
           "copy_ms": 1e3 * t["copy_in"][w], "renderer_over_copy": t["warp"][w] / t["copy_in"][w],
           "copy_io_ms": 1e3 * t["copy_io"][w], "renderer_over_copy_io": t["warp"][w] / t["copy_io"][w],
           "grid_sample_over_copy_io": t["grid_sample"][w] / t["copy_io"][w],
           "renderer_cold_ms": 1e3 * t["warp_cold"][w], "copy_io_cold_ms": 1e3 * t["copy_io_cold"][w],
           "renderer_over_copy_io_cold": t["warp_cold"][w] / t["copy_io_cold"][w],
           "renderer_over_copy_io_cpu": t["warp"][c] / t["copy_io"][c],
           "renderer_over_copy_cpu": t["warp"][c] / t["copy_in"][c],
           "grid_sample_over_copy_io_cpu": t["grid_sample"][c] / t["copy_io"][c],
           "renderer_over_copy_io_cold_cpu": t["warp_cold"][c] / t["copy_io_cold"][c],
           "page_faults_per_renderer_call": faults_warp, "page_faults_per_step": faults_step,
           "train_frames_per_s": a.batch_size * dist.world / t["step"][w], "step_ms": 1e3 * t["step"][w],
           "step_ms_cpu": 1e3 * t["step"][c], "step_gflop": flops / 1e9, "matmul_peak_gflops": peak[w] / 1e9,
           "matmul_peak_gflops_cpu": peak[c] / 1e9, "fraction_of_peak": flops / t["step"][w] / peak[w],
           "fraction_of_peak_cpu": flops / t["step"][c] / peak[c],
           "batch": a.batch_size, "size": [H, W], "device": str(dev), "threads": torch.get_num_threads()}
    for k, v in out.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, "bench.json"), {**out, "versions": common.versions()})


def busy(args):
    """Training step time idle and beside one single-threaded CPU-bound process, with the thread count
    common.Dist chooses and with OMP_NUM_THREADS=<all CPUs> forced (the old behaviour): plain
    `sfm_aign.py --steps N` runs, their training wall time (no evaluation) from results.json."""
    rows, cpus = [], os.cpu_count()
    spin = [sys.executable, "-c", "while True: pass"]
    for label, threads in (("common.Dist's choice", None), (f"OMP_NUM_THREADS={cpus} (before)", cpus)):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        times = []
        for neighbour in (False, True):
            other = subprocess.Popen(spin) if neighbour else None
            time.sleep(1.0 if neighbour else 0)
            out = os.path.join(args.out, f"{'busy' if neighbour else 'idle'}-{threads or 'auto'}")
            cmd = [sys.executable, os.path.join(ROOT, "sfm_aign.py"), "--steps", str(args.steps or 80),
                   "--eval-every", str(args.steps or 80), "--no-progress", "--out", out, *args.extra]
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
            if other is not None:
                other.kill()
                other.wait()
            with open(os.path.join(out, "results.json")) as f, open(os.path.join(out, "versions.json")) as g:
                times.append((json.load(f)["wall_s"] / (args.steps or 80), json.load(g)["cpu_threads"]))
        (idle, n_idle), (loaded, n_busy) = times
        rows.append(f"| {label} | {n_idle} / {n_busy} | {1e3 * idle:.0f} | {1e3 * loaded:.0f} | "
                    f"{loaded / idle:.2f} |")
    text = "\n".join(["| threads | threads idle / busy | ms per step idle | ms per step beside 1 busy process "
                      "| slowdown |", "| --- | --- | --- | --- | --- |", *rows,
                      f"\n{args.steps or 80} default training steps per run, {cpus} CPUs."])
    print(text)
    with open(os.path.join(args.out, "busy.md"), "w") as f:
        f.write(text + "\n")


def run_all(args, ablations):
    sys.path.insert(0, ROOT)
    import common
    # once, before the parallel runs share the cache
    root = common.builtin_dataset(os.path.join(ROOT, "sfm_aign.py"), "sfm", "sfm_builtin", common.Dist(args.device))
    if args.validation and not os.path.isdir(os.path.join(root, "val")):
        sys.exit(f"error: {root}: expected a val/ split in the built-in data, found none")
    # seed-major order: a bench cut short still holds every ablation
    jobs = [(name, seed, flags) for seed in args.seeds for name, _, flags in ablations]
    running, env = [], dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    while jobs or running:
        while jobs and len(running) < args.parallel:
            name, seed, flags = jobs.pop(0)
            out = os.path.join(args.out, f"{name}-s{seed}")
            cmd = [sys.executable, os.path.join(ROOT, "sfm_aign.py"), "--seed", str(seed), "--out", out,
                   "--device", args.device, "--no-progress", *flags, *args.extra]
            if args.steps:  # shorter runs keep the default's warm-up share (500 of 2000 steps)
                cmd += ["--steps", str(args.steps)] + ["--adv-warmup", str(args.steps // 4)] * (
                    "--adv-warmup" not in flags)
            os.makedirs(out, exist_ok=True)
            log = open(os.path.join(out, "stdout.txt"), "w")
            print(" ".join(cmd), flush=True)
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), out))
        for proc, out in list(running):
            if proc.poll() is not None:
                running.remove((proc, out))
                print(f"{out}: exit {proc.returncode}", flush=True)
        time.sleep(1)


def fmt(values, digits=3):
    values = [v for v in values if v is not None]
    if len(values) < 2:  # one run: no spread to show
        return f"{values[0]:.{digits}f}" if values else "–"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def load_runs(args, name):
    """results.json of the finished seeds of one row; with --validation its metrics replaced by the
    run's last val_* record in metrics.jsonl (the final model on the validation split)."""
    res = []
    for seed in args.seeds:
        path = os.path.join(args.out, f"{name}-s{seed}", "results.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            r = json.load(f)
        if getattr(args, "validation", False):
            with open(os.path.join(os.path.dirname(path), "metrics.jsonl")) as f:
                last = [json.loads(line) for line in f][-1]
            r = {k: r[k] for k in ("wall_s", "steps", "device")}
            for key, v in last.items():
                if key.startswith("val_"):
                    group, _, metric = key[4:].partition("/")
                    if metric:
                        r.setdefault(group, {})[metric] = v
                    else:
                        r[group] = v
            r.setdefault("depth", None)
            if r["depth"] is None:
                sys.exit(f"error: {path}: expected val_* records in metrics.jsonl (data with a val/ split)")
        res.append(r)
    return res


def rows_of(args, curve=False):
    """The rows --configs names (all without it): CURVE, or ABLATIONS and PRIORS (PRIORS first with
    --validation; a name in both lists, e.g. photo, is the same run)."""
    rows = CURVE if curve else PRIORS + ABLATIONS if args.validation else ABLATIONS + PRIORS
    rows = [r for k, r in enumerate(rows) if r[0] not in [q[0] for q in rows[:k]]]
    return [r for r in rows if not args.configs or r[0] in args.configs]


def table(args):
    lines = ["| method | abs_rel (no scaling) | a1 (no scaling) | abs_rel (median-scaled) | a1 (median-scaled) "
             "| scale gt/pred | ATE (m) | ATE no scale fit (m) | wall s / run | runs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    hardware = None
    for name, desc, _ in rows_of(args):
        res = load_runs(args, name)
        for seed in args.seeds:
            vpath = os.path.join(args.out, f"{name}-s{seed}", "versions.json")
            if res and hardware is None and os.path.exists(vpath):
                with open(vpath) as f:
                    hardware = json.load(f)
        if not res:
            continue
        lines.append(f"| {desc} | {fmt([r['depth']['abs_rel'] for r in res])} | {fmt([r['depth']['a1'] for r in res])} "
                     f"| {fmt([r['depth_median_scaled']['abs_rel'] for r in res])} "
                     f"| {fmt([r['depth_median_scaled']['a1'] for r in res])} "
                     f"| {fmt([r['median_scale'] for r in res], 2)} | {fmt([r['ate'] for r in res], 4)} "
                     f"| {fmt([r['ate_no_scale'] for r in res], 4)} "
                     f"| {fmt([r.get('wall_s', r.get('wall_seconds')) for r in res], 0)} "
                     f"| {len(res)} (steps {res[0]['steps']}, {res[0]['device']}) |")
    if hardware:
        split = "val (last val_* record of metrics.jsonl)" if args.validation else "test (results.json)"
        lines.append(f"\nHardware: {hardware.get('cuda') or hardware.get('processor')}, torch {hardware['torch']}, "
                     f"{hardware['platform']}; seeds {' '.join(map(str, args.seeds))}; split: {split}.")
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")


def plot(path, series, xs, size=(320, 480)):
    """A plain raster line plot (no text; the caption explains it): x = log fraction, y = abs_rel from 0;
    light grid lines at every x and every 0.1 of y; per series (rgb, means, stds) the mean line, 5x5
    dots and +-std bars."""
    h, w = size
    img, top = np.ones((h, w, 3)), 1.1 * max(m + s for _, ms, ss in series for m, s in zip(ms, ss))
    lx = np.log10(xs)

    def px(x, y):
        return (int(round(20 + (x - lx[0]) / (lx[-1] - lx[0]) * (w - 40))),
                int(round(h - 20 - y / top * (h - 40))))
    for x in lx:
        img[20:h - 20, px(x, 0)[0]] = 0.85
    for y in np.arange(0, top, 0.1):
        img[px(0, y)[1], 20:w - 20] = 0.85
    for rgb, means, stds in series:
        for x, m, s in zip(lx, means, stds):
            c, r = px(x, m)
            img[r - 2:r + 3, c - 2:c + 3] = rgb
            img[px(x, m + s)[1]:px(x, m - s)[1] + 1, c] = rgb
        t = np.linspace(lx[0], lx[-1], 4 * w)
        for c, r in (px(x, y) for x, y in zip(t, np.interp(t, lx, means))):
            img[r, c] = rgb
    sys.path.insert(0, ROOT)
    import common
    common.write_png(path, img)


def curve(args):
    """The label-efficiency table (3-seed means, relative gain of AIGN + pairs in unscaled abs_rel) and plot."""
    lines = ["| paired (triplets) | supervised only abs_rel | AIGN + pairs abs_rel | gain | supervised only "
             "abs_rel (median-scaled) | AIGN + pairs abs_rel (median-scaled) | wall s / run (sup, AIGN) | runs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    series, xs = {"sup": ([], []), "aign": ([], [])}, []
    for f in FRACTIONS:
        sup, aign = load_runs(args, f"sup{f:g}"), load_runs(args, f"aign{f:g}")
        if not sup or not aign:
            continue
        log = os.path.join(args.out, f"sup{f:g}-s{args.seeds[0]}", "stdout.txt")
        n = next((ln.split("(")[1].split()[0] for ln in open(log) if "paired)" in ln), "?")
        a, b = (np.mean([r["depth"]["abs_rel"] for r in rs]) for rs in (sup, aign))
        lines.append(f"| {100 * f:g}% ({n}) | {fmt([r['depth']['abs_rel'] for r in sup])} "
                     f"| {fmt([r['depth']['abs_rel'] for r in aign])} | {100 * (1 - b / a):+.1f}% "
                     f"| {fmt([r['depth_median_scaled']['abs_rel'] for r in sup])} "
                     f"| {fmt([r['depth_median_scaled']['abs_rel'] for r in aign])} "
                     f"| {np.mean([r['wall_s'] for r in sup]):.0f}, {np.mean([r['wall_s'] for r in aign]):.0f} "
                     f"| {len(sup)}+{len(aign)} (steps {sup[0]['steps']}, {sup[0]['device']}) |")
        xs.append(f)
        for k, rs in (("sup", sup), ("aign", aign)):
            series[k][0].append(float(np.mean([r["depth"]["abs_rel"] for r in rs])))
            series[k][1].append(float(np.std([r["depth"]["abs_rel"] for r in rs])))
    text = "\n".join(lines) + f"\n\nseeds {' '.join(map(str, args.seeds))}; gain = 1 - AIGN / supervised (means)."
    vpath = os.path.join(args.out, f"sup{xs[0]:g}-s{args.seeds[0]}", "versions.json") if xs else ""
    if os.path.exists(vpath):  # the first fraction in the table (not always 1%)
        with open(vpath) as f:
            v = json.load(f)
        text += f" Hardware: {v.get('cuda') or v['processor']}, {v['cpu_threads']} thread(s), torch {v['torch']}."
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "curve.md"), "w") as f:
        f.write(text + "\n")
    if len(xs) >= 2:
        plot(os.path.join(args.out, "curve.png"), [((0.1, 0.3, 0.8), *series["sup"]),
                                                     ((0.85, 0.1, 0.1), *series["aign"])], np.array(xs))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="folder of the runs (default: bench/sfm, or bench/sfm_val "
                                               "with --validation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--steps", type=int, default=None, help="--steps of each run (default: the script's)")
    p.add_argument("--device", default="auto", help="--device of each run (default: auto)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per run (default: 1)")
    p.add_argument("--validation", action="store_true",
                   help="the prior candidates, tabulated on the val/ split instead of test (default: off)")
    p.add_argument("--configs", nargs="+", default=None, help="only these rows (default: all)")
    p.add_argument("--table-only", action="store_true", help="only collect the finished runs (default: off)")
    p.add_argument("--throughput", action="store_true",
                   help="time the renderer and train_step into OUT/bench.json instead of runs (default: off)")
    p.add_argument("--curve", action="store_true", help="the label-efficiency curve: supervised only vs AIGN + "
                   "pairs at paired fractions 1, 2, 5, 10, 100%% into OUT/curve.md + curve.png (default: off)")
    p.add_argument("--busy", action="store_true",
                   help="time training steps idle vs beside one CPU-bound process into OUT/busy.md (default: off)")
    p.add_argument("extra", nargs="*", help="more flags for every run, after -- (default: none)")
    args = p.parse_args()
    args.out = args.out or os.path.join(ROOT, "bench", "sfm_throughput" if args.throughput else "sfm_busy"
                                        if args.busy else "sfm_curve" + "_val" * args.validation if args.curve
                                        else "sfm_val" if args.validation else "sfm")
    if args.throughput:
        return throughput(args)
    if args.busy:
        os.makedirs(args.out, exist_ok=True)
        return busy(args)
    if not args.table_only:
        run_all(args, rows_of(args, args.curve))
    (curve if args.curve else table)(args)


if __name__ == "__main__":
    main()
