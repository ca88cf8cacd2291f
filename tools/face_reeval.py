"""Re-evaluate finished face_aign.py runs with G itself (or G_ema) of their checkpoints, no training.

    python3 tools/face_reeval.py --out NEW RUN_DIR [RUN_DIR ...]   # validation -> NEW/<run>/metrics.jsonl
    python3 tools/face_reeval.py --split test --out NEW RUN_DIR [...]   # test -> NEW/<run>/results.json

Training never reads the evaluated generator (face_aign.ema_update only writes G_ema), and --ema 0 makes G_ema
equal G bit for bit, so G of a finished run's checkpoint IS what the same training with --ema 0 evaluates and
predicts with. Each run is re-evaluated exactly as face_aign.py evaluates it (its args.json: data, judged
attribute, judges; the same EvalSet). `--split val` writes one validation record (step and the run's last
training loss_d kept) for `tools/face_bench.py --val --out NEW`; `--split test` writes results.json (the run's
own, its training stats kept, the test metrics replaced, "evaluated": the generator) + bench_wall.json and the
figures for `tools/face_bench.py --table --out NEW`. Read the test split only after a setting is chosen.
"""
import argparse
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import face_aign as A  # noqa: E402


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="face_aign.py run folders (args.json; training runs: ckpt.pt)")
    p.add_argument("--out", required=True, help="folder for the re-evaluated runs (one sub-folder per run)")
    p.add_argument("--gen", choices=["G", "G_ema"], default="G", help="generator to evaluate (default: G)")
    p.add_argument("--split", choices=["val", "test"], default="val", help="faces to evaluate (default: val)")
    return p.parse_args(argv)


def run_args(run):
    """The run's face_aign.py args (its args.json over today's defaults) and its checkpoint path."""
    saved = common.read_json(os.path.join(run, "args.json"), "a face_aign.py run's args.json")
    args = A.get_args([])
    vars(args).update(saved)
    ckpt = saved["resume"] if saved.get("eval_only") else os.path.join(run, "ckpt.pt")
    return args, ckpt


def reeval(run, out, gen, split, dist):
    args, ckpt = run_args(run)
    if split == "val":  # the training run's last record (an eval-only run has none: its checkpoint's run)
        path = os.path.join(os.path.dirname(ckpt), "metrics.jsonl")
        last = json.loads(common.read_text(path, "the training run's metrics.jsonl").splitlines()[-1])
    else:
        res = common.read_json(os.path.join(run, "results.json"), "the run's results.json")
    state = common.load_checkpoint(ckpt, A.SCRIPT, nets=A.NETS)
    nets = A.build_nets(args, dist.device)
    for k in A.NETS:
        common.load_weights(nets[k], state["nets"][k], ckpt, k)
    data = A.load_data(args, dist)
    judges = A.make_judges(args, data)  # also resolves --judge auto, as face_aign.main does
    evs = A.EvalSet(args, data[split], data[f"{split}_labels"], judges, data["mem"], dist.device,
                    figures=split == "test")
    os.makedirs(out, exist_ok=True)
    m = evs.evaluate(nets[gen], nets["D"], out, state["step"])
    if split == "val":
        rec = {"step": state["step"], "loss_d": last.get("loss_d"), **{f"val_{k}": v for k, v in m.items()},
               "evaluated": gen, "checkpoint": ckpt}
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            f.write(json.dumps(rec) + "\n")
    else:
        res.update({**m, "evaluated": gen, "checkpoint": ckpt})  # test metrics new, training stats kept
        common.write_json(os.path.join(out, "results.json"), res)
        if os.path.exists(os.path.join(run, "bench_wall.json")):
            shutil.copy(os.path.join(run, "bench_wall.json"), out)
    common.log(f"{run} ({gen}, {split}, step {state['step']}) -> {out}")  # no numbers: test is read later


def main(argv=None):
    a = get_args(argv)
    dist = common.Dist("cpu")
    for run in a.runs:
        if not os.path.isfile(os.path.join(run, "args.json")):
            raise common.InputError(f"{run}: expected a face_aign.py run folder with args.json")
        reeval(run.rstrip("/"), os.path.join(a.out, os.path.basename(run.rstrip("/"))), a.gen, a.split, dist)


if __name__ == "__main__":
    common.run_main(main)
