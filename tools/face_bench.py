"""The face_aign.py contrast benchmark: opposite memories on the same inputs, both judges, one command.

    python3 tools/face_bench.py                          # seeds 0 1 2, built-in faces, into bench/faces/
    python3 tools/face_bench.py --seeds 0 -- --steps 800  # flags after `--` go to every training run
    python3 tools/face_bench.py --only sr-female sr-male   # some runs only (the table shows what exists)
    python3 tools/face_bench.py --table                    # the table and grids of the finished runs only
    python3 tools/face_bench.py --throughput [-- --task inpaint ...]   # train_step timing -> OUT/bench.json

For each pair the same model is trained on the same generator inputs with opposite memories and judged
for the same attribute on the same test faces: female vs male memory (--bias -Male / Male, judged
female), old vs young (--bias -Young / Young, judged old), and mouth inpainting with an open vs a closed
mouth memory (--bias Mouth_Slightly_Open / -Mouth_Slightly_Open, judged open). Beside them: the unbiased
memory (the unbiased SR run, re-judged with --eval-only for old), bicubic / smooth fill, the ground truth,
and the paired SR bound with the posterior-sampler estimate (bound - 3.01 dB: a sampler of the true
posterior has twice the bound's expected squared error). Each run is
`face_aign.py FLAGS --seed S --out OUT/<run>-s<S>`; finished runs (results.json) are reused. Writes
OUT/table.md and OUT/grid_<pair>.png (input | baseline | memory A | memory B | ground truth, 8 fixed
test faces of seed --seeds[0]). The last column, the judge's A − B on true faces, is 2 × its accuracy on the
balanced test labels − 1: its rate on truly-A minus truly-B test faces, what a perfect swap of the attribute
in real faces would show on that judge (the ONNX models and the mouth rule made the labels: +100).

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

PAIRED = ["--paired-frac", "1", "--lambda-sup", "1", "--lambda-rec", "0", "--lambda-adv", "0.001"]
MOUTH = "Mouth_Slightly_Open"
# run name -> face_aign.py flags (eval-only runs: "eval:<trained run>" and the flags that change)
RUNS = {"sr-unbiased": ["--task", "sr", "--judge-attr", "-Male"],
        "sr-female": ["--task", "sr", "--bias", "-Male", "--judge-attr", "-Male"],
        "sr-male": ["--task", "sr", "--bias", "Male", "--judge-attr", "-Male"],
        "sr-old": ["--task", "sr", "--bias", "-Young", "--judge-attr", "-Young"],
        "sr-young": ["--task", "sr", "--bias", "Young", "--judge-attr", "-Young"],
        "sr-unbiased_old": ["eval:sr-unbiased", "--judge-attr", "-Young"],
        "sr-paired": ["--task", "sr", *PAIRED, "--judge-attr", "-Male"],
        "inpaint-unbiased": ["--task", "inpaint", "--judge-attr", MOUTH],
        "inpaint-open": ["--task", "inpaint", "--bias", MOUTH, "--judge-attr", MOUTH],
        "inpaint-closed": ["--task", "inpaint", "--bias", f"-{MOUTH}", "--judge-attr", MOUTH]}
# pair -> (judged word, memory A run, memory B run, unbiased run, baseline name)
PAIRS = {"gender": ("female", "sr-female", "sr-male", "sr-unbiased", "bicubic"),
         "age": ("old", "sr-old", "sr-young", "sr-unbiased_old", "bicubic"),
         "mouth": ("open mouth", "inpaint-open", "inpaint-closed", "inpaint-unbiased", "fill")}
JUDGES = ("onnx", "cnn")
CONTRAST_HEAD = ["pair", "judge", "memory A", "memory B", "unbiased", "baseline", "ground truth", "A − B",
                 "A − B per seed", "same sign all seeds", "LR PSNR A / B (dB)", "judges agree",
                 "judge's A − B on true faces"]


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--out", default="bench/faces", help="output folder (default: bench/faces)")
    p.add_argument("--only", nargs="*", default=None, help=f"run only these (default: all: {' '.join(RUNS)})")
    p.add_argument("--val", action="store_true",
                   help="only print the contrast table of the runs' last validation records (default: off)")
    p.add_argument("--step", type=int, default=None,
                   help="--val: the validation record of this step (default: each run's last)")
    p.add_argument("--label", default=None,
                   help="--val: a first column naming the setting (default: none)")
    p.add_argument("--table", action="store_true",
                   help="only write the table and grids of the finished runs, launch nothing (default: off)")
    p.add_argument("--throughput", action="store_true",
                   help="only time face_aign.train_step (flags after `--`) into OUT/bench.json (default: off)")
    p.add_argument("extra", nargs=argparse.REMAINDER,
                   help="flags passed to every face_aign.py training run after `--` (e.g. -- --steps 800)")
    args = p.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    return args


def command(args, name, seed):
    """The face_aign.py command line of run `name` for `seed` (an eval-only run reads its trained run)."""
    out = os.path.join(args.out, f"{name}-s{seed}")
    flags = RUNS[name]
    if flags[0].startswith("eval:"):
        ckpt = os.path.join(args.out, f"{flags[0][5:]}-s{seed}", "ckpt.pt")
        return [sys.executable, os.path.join(ROOT, "face_aign.py"), "--resume", ckpt, "--eval-only", *flags[1:],
                *args.extra, "--out", out, "--no-progress"]
    return [sys.executable, os.path.join(ROOT, "face_aign.py"), *flags, *args.extra, "--seed", str(seed),
            "--out", out, "--no-progress"]


def launch(args):
    """Run every missing run, one after another (eval-only runs after the run they read)."""
    failed = []
    for seed in args.seeds:
        for name in RUNS:
            out = os.path.join(args.out, f"{name}-s{seed}")
            if (args.only and name not in args.only) or os.path.exists(os.path.join(out, "results.json")):
                continue
            cmd = command(args, name, seed)
            os.makedirs(out, exist_ok=True)
            print(f"start {name} seed {seed}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.time()
            with open(os.path.join(out, "stdout.txt"), "w") as logf:
                rc = subprocess.run(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT).returncode
            common.write_json(os.path.join(out, "bench_wall.json"), {"wall_total_s": time.time() - t0})
            print(f"done  {name} seed {seed}: exit {rc}, {time.time() - t0:.0f} s", flush=True)
            if rc != 0:
                failed.append(f"{name} seed {seed}")
    return failed


def load(args, val=False):
    """{run name: {seed: results.json + wall_total_s}} of the finished runs (val: the last validation
    record of metrics.jsonl, or that of step --step, instead, val_ dropped from its keys)."""
    out = {}
    for name in RUNS:
        for s in args.seeds:
            path = os.path.join(args.out, f"{name}-s{s}", "results.json")
            if val and os.path.exists(os.path.join(os.path.dirname(path), "metrics.jsonl")):
                recs = [json.loads(ln) for ln in open(os.path.join(os.path.dirname(path), "metrics.jsonl"))]
                recs = [r for r in recs if args.step in (None, r["step"])]
                if not recs:
                    continue
                last = recs[-1]
                out.setdefault(name, {})[s] = {**{k[4:]: v for k, v in last.items() if k.startswith("val_")},
                                               "loss_d_train": last.get("loss_d"), "step": last["step"]}
            elif os.path.exists(path) and not val:
                wall = os.path.join(os.path.dirname(path), "bench_wall.json")
                r = json.load(open(path))
                r["wall_total_s"] = json.load(open(wall))["wall_total_s"] if os.path.exists(wall) else None
                out.setdefault(name, {})[s] = r
    return out


def fmt(vals, digits, sign=False):
    """mean ± std (one value: itself); '–' when there is none."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f.format(np.mean(vals)) + (f" ± {np.std(vals):.{digits}f}" if len(vals) > 1 else "")


def contrast_rows(res, seeds):
    """One row per pair and judge: rates of memory A, B, unbiased, baseline, truth; A - B per seed."""
    rows = []
    for pair, (word, a, b, unb, base) in PAIRS.items():
        ra, rb, ru = res.get(a, {}), res.get(b, {}), res.get(unb, {})
        both = [s for s in seeds if s in ra and s in rb]
        if not both:
            continue
        for j in JUDGES:
            key = f"attr_rate_{j}"
            if key not in ra[both[0]]:
                continue
            diffs = [ra[s][key] - rb[s][key] for s in both]
            signs = [np.sign(ra[s][key] - rb[s][key]) for s in both]
            rows.append([f"{pair}: judged {word}", j, fmt([ra[s][key] for s in both], 3),
                         fmt([rb[s][key] for s in both], 3), fmt([r.get(key) for r in ru.values()], 3),
                         fmt([ra[s].get(f"{key}_{base}") for s in both], 3),
                         fmt([ra[s].get(f"attr_rate_gt_{j}") for s in both], 3),
                         f"**{100 * np.mean(diffs):+.1f}**", " / ".join(f"{100 * d:+.1f}" for d in diffs),
                         "yes" if len(set(signs)) == 1 else "no",
                         fmt([ra[s].get("psnr_lr") for s in both], 2) + " / " + fmt([rb[s].get("psnr_lr") for s in both], 2)])
    for pair, (word, a, b, _, _) in PAIRS.items():  # do the two judges agree in sign, seed by seed?
        pa, pb = res.get(a, {}), res.get(b, {})
        both = [s for s in seeds if s in pa and s in pb and all(f"attr_rate_{j}" in pa[s] for j in JUDGES)]
        agree = [np.sign(pa[s]["attr_rate_onnx"] - pb[s]["attr_rate_onnx"])
                 == np.sign(pa[s]["attr_rate_cnn"] - pb[s]["attr_rate_cnn"]) for s in both]
        for r in rows:
            if r[0].startswith(pair + ":") and both:
                r.append(f"{sum(agree)}/{len(agree)}")
    for r in rows:  # the judge's contrast between truly-A and truly-B test faces (balanced): 2 accuracy - 1
        a = PAIRS[r[0].split(":")[0]][1]
        acc = [res[a][s].get(f"judge_acc_{r[1]}") for s in seeds if s in res.get(a, {})]
        r += [""] * (len(CONTRAST_HEAD) - 1 - len(r)) + [fmt([None if v is None else 100 * (2 * v - 1)
                                                              for v in acc], 1, sign=True)]
    return rows


def sr_rows(res, seeds):
    """SR quality: bicubic, the paired bound and the posterior-sampler estimate, the AIGN runs."""
    rows, cols = [], (("psnr_hr", 2), ("ssim_hr", 3), ("psnr_lr", 2))
    ref = res.get("sr-unbiased", {}) or res.get("sr-female", {})
    if ref:
        rows.append(["bicubic (no training)"] + [fmt([r[f"{k}_bicubic"] for r in ref.values()], d) for k, d in cols]
                    + ["–", "–", len(ref)])
    paired = res.get("sr-paired", {})
    if paired:
        rows.append(["posterior-sampler estimate (paired bound − 3.01 dB)",
                     fmt([r["psnr_hr"] - 3.01 for r in paired.values()], 2), "–", "–", "–", "–", len(paired)])
    for name in ("sr-paired", "sr-unbiased", "sr-female", "sr-male", "sr-old", "sr-young"):
        rs = list(res.get(name, {}).values())
        if rs:
            rows.append([name] + [fmt([r[k] for r in rs], d) for k, d in cols]
                        + [fmt([r["wall_total_s"] for r in rs], 0), fmt([r["images_per_s"] for r in rs], 0), len(rs)])
    for name in ("inpaint-unbiased", "inpaint-open", "inpaint-closed"):
        rs = list(res.get(name, {}).values())
        if rs:
            rows.append([name + " (HR PSNR: whole face)"] + [fmt([r[k] for r in rs], d) for k, d in cols]
                        + [fmt([r["wall_total_s"] for r in rs], 0), fmt([r["images_per_s"] for r in rs], 0), len(rs)])
    return rows


def markdown(head, rows):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def table(args):
    res = load(args)
    if not res:
        return None
    first = next(iter(next(iter(res.values())).values()))
    versions = json.load(open(os.path.join(args.out, f"{next(iter(res))}-s{next(iter(res[next(iter(res))]))}",
                                           "versions.json")))
    hw = (f"{versions['cuda']} GPU" if versions.get("cuda") else
          f"CPU ({versions['processor']}, {versions['cpu_threads']} torch threads)")
    steps = sorted({r["steps"] for rs in res.values() for r in rs.values() if "steps" in r})
    ran = sorted({s for rs in res.values() for s in rs})
    md = ("Contrast (memory A − memory B, judged rate in points; per seed after the mean):\n\n"
          + markdown(CONTRAST_HEAD, contrast_rows(res, ran))
          + "\n\nSuper-resolution and inpainting quality (test faces):\n\n"
          + markdown(["run", "HR PSNR (dB)", "HR SSIM", "LR PSNR (dB)", "wall s/run", "train images/s", "seeds"],
                     sr_rows(res, ran))
          + f"\n\nSeeds {ran}; {'/'.join(map(str, steps))} training steps; {first['n_test']} test faces per judged "
          f"attribute (balanced); memory A/B: {', '.join(f'{a} / {b}' for _, a, b, _, _ in PAIRS.values())}. "
          f"Hardware: {hw}; torch {versions['torch']}; `python3 tools/face_bench.py "
          f"{' '.join(sys.argv[1:])}`.\n")
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md)
    return md


def grids(args):
    """Per pair, seed --seeds[0]: input | baseline | memory A | memory B | ground truth on the same test faces."""
    s = args.seeds[0]
    for pair, (word, a, b, _, base) in PAIRS.items():
        za, zb = (os.path.join(args.out, f"{r}-s{s}", "samples.npz") for r in (a, b))
        if not (os.path.exists(za) and os.path.exists(zb)):
            continue
        za, zb = np.load(za), np.load(zb)
        assert np.array_equal(za["gt"], zb["gt"]) and np.array_equal(za["input"], zb["input"])  # same faces
        rows = [[za["input"][i], za["baseline"][i], za["output"][i], zb["output"][i], za["gt"][i]]
                for i in range(len(za["gt"]))]
        common.write_png(os.path.join(args.out, f"grid_{pair}.png"), common.image_grid(rows))
        print(f"wrote {args.out}/grid_{pair}.png (input | {base} | {a} | {b} | ground truth)")


def throughput(args):
    """Training images/s and the fraction of the measured matmul peak reached by face_aign.train_step."""
    fargs = face_aign.get_args(args.extra + ["--no-progress"])
    dist = common.Dist(fargs.device)
    common.seed_everything(fargs.seed, fargs.deterministic)
    nets = face_aign.build_nets(fargs, dist.device)
    data = face_aign.load_data(fargs, dist)
    opts = {k: torch.optim.Adam(nets[k].parameters(), lr, betas=(0.5, 0.999))
            for k, lr in (("G", fargs.lr), ("D", fargs.d_lr))}
    gen = torch.Generator().manual_seed(fargs.seed)

    def step():
        face_aign.train_step(nets, opts, face_aign.draw_batch(data, gen, fargs, dist), fargs, dist, 0)
    flops = bench_util.count_flops(step)
    dt = bench_util.time_per_call(step, dist.device, reps=10, warmup=3)
    peak = bench_util.matmul_peak(dist.device)
    out = {"images_per_s": fargs.batch_size * dist.world / dt, "step_s": dt, "flops_per_step": flops,
           "achieved_flops": flops / dt, "matmul_peak_flops": peak, "fraction_of_peak": flops / dt / peak,
           "device": str(dist.device), "task": fargs.task, "batch_size": fargs.batch_size, "world": dist.world,
           "threads": torch.get_num_threads(), "versions": common.versions()}
    if dist.main:
        common.write_json(os.path.join(args.out, "bench.json"), out)
        print(common.format_record({k: v for k, v in out.items() if k != "versions"}))


def main():
    args = get_args()
    os.makedirs(args.out, exist_ok=True)
    if args.throughput:
        return throughput(args)
    if args.val:  # what settings are chosen on: the validation faces; D's loss and accuracy per run
        res, lab = load(args, val=True), [args.label] if args.label else []
        rows = [lab + r for r in contrast_rows(res, sorted({s for rs in res.values() for s in rs}))]
        d_rows = [lab + [n, s, r["step"], *(f"{r.get(f'attr_rate_{j}', float('nan')):.3f}" for j in JUDGES),
                         f"{r['loss_d_train']:.3f}", f"{r['d_acc_mem']:.3f}", f"{r['d_acc_out']:.3f}",
                         fmt([r.get("psnr_lr")], 2)] for n, rs in res.items() for s, r in sorted(rs.items())]
        head = ["setting"] * bool(lab)
        return print(markdown(head + CONTRAST_HEAD, rows) + "\n\n" + markdown(head + [
            "run", "seed", "step", "judged rate onnx", "judged rate cnn", "D loss (last interval)",
            "D accuracy on memory", "D accuracy on outputs", "LR PSNR (dB)"], d_rows))
    failed = [] if args.table else launch(args)
    md = table(args)
    grids(args)
    if md:  # the test table is printed only when asked for, so that launching runs never shows test numbers
        print(md if args.table else f"wrote {os.path.join(args.out, 'table.md')} (test faces: --table prints it)")
    if failed:
        sys.exit(f"failed runs: {', '.join(failed)} (see their stdout.txt)")


if __name__ == "__main__":
    common.run_main(main)
