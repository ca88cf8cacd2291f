"""Run the face_aign.py benchmark set over seeds and write the README table and figure grids.

    python3 tools/face_bench.py                     # 3 seeds, built-in faces, into bench/faces/
    python3 tools/face_bench.py --jobs 4 --steps 1500 --data CELEBA_DIR

    python3 tools/face_bench.py --attr -Young --only sr-unbiased_memory sr-old_memory -- --steps 1500
    python3 tools/face_bench.py --throughput [-- --task inpaint ...]   # train_step timing -> OUT/bench.json

Rows: bicubic (no training), paired SR (ground-truth HR loss: the bound), unbiased AIGN, biased
AIGN (memory of --attr, default -Male: female), and inpainting (smooth-fill baseline, unbiased and
biased memory); every run is judged for --attr on a test set balanced on it. Each run
is `face_aign.py ... --seed S --out OUT/<row>-s<S>`; finished runs (results.json present) are
reused, so an interrupted benchmark continues; a run stopped by --timeout is evaluated from its
checkpoint (`--resume OUT/<row>-s<S>/ckpt.pt --steps <its step>`). The paired row is
`--paired-frac 1 --lambda-sup 1 --lambda-rec 0 --lambda-adv 0.001` (the former `--paired`).
Writes OUT/table.md, OUT/grid_sr.png, OUT/grid_inpaint.png.

--throughput times face_aign.train_step from outside (tools/bench_util.py): images/s, seconds per
step, FLOPs per step and the fraction of the measured matmul peak, into OUT/bench.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench_util  # noqa: E402
import common  # noqa: E402
import face_aign  # noqa: E402
from face_aign import glue_negated  # noqa: E402

PAIRED = ["--paired-frac", "1", "--lambda-sup", "1", "--lambda-rec", "0", "--lambda-adv", "0.001"]  # old --paired

WORD = {"-Male": "female", "Male": "male", "-Young": "old", "Young": "young"}  # else the attribute itself


def runs(attr):
    """Row name -> face_aign.py flags; the biased rows use a memory of faces with `attr`."""
    judged, word = ["--judge-attr", attr], WORD.get(attr, attr)
    return {"paired SR (bound)": ["--task", "sr", *PAIRED, *judged],
            "AIGN SR, unbiased memory": ["--task", "sr", *judged],
            f"AIGN SR, {word} memory": ["--task", "sr", "--bias", attr],
            "AIGN inpaint, unbiased memory": ["--task", "inpaint", *judged],
            f"AIGN inpaint, {word} memory": ["--task", "inpaint", "--bias", attr]}


def slug(name):  # "AIGN SR, female memory" -> "sr-female_memory"
    return name.split(" (")[0].lower().replace("aign ", "").replace(", ", "-").replace(" ", "_")


def cols(attr):
    return [("psnr_hr", "HR PSNR (dB)", 2), ("ssim_hr", "HR SSIM", 3), ("psnr_lr", "LR PSNR (dB)", 2),
            ("attr_rate", f"judged {WORD.get(attr, attr)}", 3)]


def get_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--attr", default="-Male", help="judged attribute and biased memory (default: -Male, female)")
    p.add_argument("--out", default=None, help="output folder (default: bench/faces, bench/faces_<attr> for others)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    p.add_argument("--timeout", type=int, default=0,
                   help="stop each run gracefully (SIGTERM: evaluate, checkpoint, results) after N s (default: 0 = never)")
    p.add_argument("--only", nargs="*", default=None, help="run only these row slugs (default: all)")
    p.add_argument("--throughput", action="store_true",
                   help="only time face_aign.train_step (flags after `--`) into OUT/bench.json (default: off)")
    p.add_argument("extra", nargs=argparse.REMAINDER,
                   help="flags passed to every face_aign.py run after `--` (e.g. -- --steps 1500 --data DIR)")
    args = p.parse_args(glue_negated(sys.argv[1:], ("--attr",)))  # `--attr -Young` is one flag
    if args.out is None:
        args.out = "bench/faces" if args.attr == "-Male" else f"bench/faces_{WORD.get(args.attr, args.attr)}"
    return args


def launch(args):
    extra = [a for a in args.extra if a != "--"]
    todo = []
    for name, flags in runs(args.attr).items():
        if args.only and slug(name) not in args.only:
            continue
        for s in args.seeds:
            out = os.path.join(args.out, f"{slug(name)}-s{s}")
            if not os.path.exists(os.path.join(out, "results.json")):
                limit = ["timeout", "-s", "TERM", str(args.timeout)] if args.timeout else []
                todo.append((name, s, [*limit, sys.executable, os.path.join(ROOT, "face_aign.py"), *flags, *extra,
                                       "--seed", str(s), "--out", out, "--no-progress"]))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running, failed = [], []
    while todo or running:
        while todo and len(running) < args.jobs:
            name, s, cmd = todo.pop(0)
            os.makedirs(cmd[-2], exist_ok=True)
            logf = open(os.path.join(cmd[-2], "stdout.txt"), "w")
            print(f"start {name} seed {s}: {' '.join(cmd[1:])}", flush=True)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
            running.append((name, s, proc, logf, time.time(), cmd[-2]))
        for item in list(running):
            name, s, proc, logf, t0, out = item
            if proc.poll() is not None:
                ckpt = os.path.join(out, "ckpt.pt")
                if proc.returncode == 124 and os.path.exists(ckpt) and not os.path.exists(
                        os.path.join(out, "results.json")):  # stopped by --timeout: evaluate its checkpoint
                    step = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
                    subprocess.run([sys.executable, os.path.join(ROOT, "face_aign.py"), *extra, "--resume", ckpt,
                                    "--steps", str(step), "--no-progress"], cwd=ROOT, env=env, stdout=logf,
                                   stderr=subprocess.STDOUT)
                logf.close()
                common.write_json(os.path.join(out, "bench_wall.json"), {"wall_total_s": time.time() - t0})
                running.remove(item)
                stopped = proc.returncode == 124 and os.path.exists(os.path.join(out, "results.json"))
                print(f"done  {name} seed {s}: " + ("stopped by --timeout" if stopped else f"exit {proc.returncode}"),
                      flush=True)
                if proc.returncode != 0 and not stopped:
                    failed.append(f"{name} seed {s}")
        time.sleep(1)
    return failed


def mean_std(vals, digits):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}" if len(vals) > 1 else f"{vals[0]:.{digits}f}"


def table(args):
    results, versions, word, columns = {}, None, WORD.get(args.attr, args.attr), cols(args.attr)
    for name in runs(args.attr):
        rs = []
        for s in args.seeds:
            path = os.path.join(args.out, f"{slug(name)}-s{s}", "results.json")
            if os.path.exists(path):
                wall = os.path.join(os.path.dirname(path), "bench_wall.json")
                rs.append({**json.load(open(path)), "wall_total_s": json.load(open(wall))["wall_total_s"]
                           if os.path.exists(wall) else None})
                versions = versions or json.load(open(os.path.join(os.path.dirname(path), "versions.json")))
        results[name] = rs
    rows = []

    def row(name, rs, suffix=""):
        cells = [mean_std([r.get(k + suffix) for r in rs], d) for k, _, d in columns]
        if suffix:
            cells += ["–", "–"]
        else:
            cells += [mean_std([r["wall_total_s"] for r in rs], 0), mean_std([r["images_per_s"] for r in rs], 0)]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {len(rs)} |")

    sr = results["AIGN SR, unbiased memory"]
    if sr:
        row("bicubic upsampling (no training)", sr, "_bicubic")
    for name in ("paired SR (bound)", "AIGN SR, unbiased memory", f"AIGN SR, {word} memory"):
        if results[name]:
            row(name, results[name])
    inp = results["AIGN inpaint, unbiased memory"] or results[f"AIGN inpaint, {word} memory"]
    if inp:
        row("smooth fill of the mouth box (no training)", inp, "_fill")
    for name in ("AIGN inpaint, unbiased memory", f"AIGN inpaint, {word} memory"):
        if results[name]:
            row(name, results[name])
    any_r = next((rs[0] for rs in results.values() if rs), None)
    if any_r is None:
        return None
    hw = (f"{versions['cuda']} GPU" if versions.get("cuda") else f"CPU ({versions['processor']}, "
          f"{versions['cpu_threads']} torch threads)")
    gt = f"{any_r['attr_rate_gt']:.3f}" if any_r.get("attr_rate_gt") is not None else "–"
    head = ("| run | " + " | ".join(c for _, c, _ in columns) + " | wall s/run | train images/s | seeds |\n"
            "| --- |" + " --- |" * (len(columns) + 3))
    steps = sorted({r["steps"] for rs in results.values() for r in rs})
    md = (f"{head}\n" + "\n".join(rows) + "\n\n"
          f"Mean ± std over seeds {args.seeds}; {'/'.join(map(str, steps))} steps per run, {any_r['n_test']} test faces "
          f"(judged {word} rate of the ground-truth test faces: {gt}); judge: {any_r['judge']}. "
          f"Hardware: {hw}; torch {versions['torch']}; `python3 tools/face_bench.py "
          f"{' '.join(sys.argv[1:])}`.\n")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md)
    return md


def grids(args):
    """Seed-0 sample faces: input | baseline | AIGN (unbiased) | AIGN (biased memory) | ground truth."""
    s, word = args.seeds[0], WORD.get(args.attr, args.attr)
    for task, base in (("sr", "bicubic"), ("inpaint", "fill")):
        a = os.path.join(args.out, f"{task}-unbiased_memory-s{s}", "samples.npz")
        b = os.path.join(args.out, f"{task}-{word}_memory-s{s}", "samples.npz")
        if not (os.path.exists(a) and os.path.exists(b)):
            continue
        za, zb = np.load(a), np.load(b)
        rows = [[za["input"][i], za["baseline"][i], za["output"][i], zb["output"][i], za["gt"][i]]
                for i in range(len(za["gt"]))]
        common.write_png(os.path.join(args.out, f"grid_{task}.png"), common.image_grid(rows))
        print(f"wrote {args.out}/grid_{task}.png (columns: input | {base} | AIGN unbiased | AIGN {word} memory | "
              f"ground truth)")


def throughput(args):
    """Training images/s and the fraction of the measured matmul peak reached by face_aign.train_step."""
    fargs = face_aign.get_args([a for a in args.extra if a != "--"] + ["--no-progress"])
    dist = common.Dist(fargs.device)
    common.seed_everything(fargs.seed, fargs.deterministic)
    nets = face_aign.build_nets(fargs, dist.device)
    data = face_aign.load_data(fargs, dist)
    opts = {k: torch.optim.Adam(nets[k].parameters(), fargs.lr, betas=(0.5, 0.999)) for k in nets}
    gen = torch.Generator().manual_seed(fargs.seed)

    def step():
        face_aign.train_step(nets, opts, face_aign.draw_batch(data, gen, fargs, dist), fargs, dist, 0)
    flops = bench_util.count_flops(step)
    dt = bench_util.time_per_call(step, dist.device, reps=10, warmup=3)
    peak = bench_util.matmul_peak(dist.device)
    out = {"images_per_s": fargs.batch_size * dist.world / dt, "step_s": dt, "flops_per_step": flops,
           "achieved_flops": flops / dt, "matmul_peak_flops": peak, "fraction_of_peak": flops / dt / peak,
           "device": str(dist.device), "task": fargs.task, "batch_size": fargs.batch_size, "world": dist.world,
           "versions": common.versions()}
    if dist.main:
        common.write_json(os.path.join(args.out, "bench.json"), out)
        print(common.format_record({k: v for k, v in out.items() if k != "versions"}))


def main():
    args = get_args()
    os.makedirs(args.out, exist_ok=True)
    if args.throughput:
        return throughput(args)
    failed = launch(args)
    md = table(args)
    grids(args)
    if md:
        print(md)
    if failed:
        sys.exit(f"failed runs: {', '.join(failed)} (see their stdout.txt)")


if __name__ == "__main__":
    common.run_main(main)
