"""Mouth fills of trained face_aign.py inpainting checkpoints on the VALIDATION faces: the evaluated generator
(G_ema, G's weights averaged with --ema) beside the raw G, as the mouth rule sees them.

    python3 tools/face_fills.py RUN/ckpt.pt [RUN2/ckpt.pt ...]     # markdown table on stdout

Per checkpoint and generator: the rule's open rate (tools/face_builtin.mouth_open: more than 0.11 of the
mouth box darker than 0.6 x its median luma), that rate on the truly-open and truly-closed validation faces,
the mean and quartiles of the dark fraction, and the CNN judge's rate (tools/face_cnn_judge.py, the cached
judge face_aign.py trains once; the judged attribute of the checkpoint). The faces are those face_aign.py validates on (the built-in
faces, or the checkpoint's --data), balanced on the checkpoint's judged attribute. No training.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import face_aign as A  # noqa: E402
import face_builtin  # noqa: E402

HEAD = ["run", "step", "generator", "rule open rate", "on truly open / closed", "dark fraction mean",
        "quartiles", "CNN judge's rate"]


def fill_stats(u8, labels):
    """(N, 3, S, S) uint8 faces (fills composited) and (N,) bool labels -> the table's numbers."""
    f = face_builtin.mouth_dark_frac(u8).numpy()  # (N,)
    is_open = f > face_builtin.MOUTH_OPEN_FRAC
    lab = labels.numpy()
    return {"rate": is_open.mean(), "rate_open": is_open[lab].mean(), "rate_closed": is_open[~lab].mean(),
            "mean": f.mean(), "quartiles": np.quantile(f, [0.25, 0.5, 0.75])}


def main(paths):
    if not paths:
        raise common.InputError("expected one or more face_aign.py inpainting checkpoints (RUN/ckpt.pt)")
    rows, cache = [], {}
    for path in paths:
        state = common.load_checkpoint(path, A.SCRIPT, nets=A.NETS)
        a = state["args"]
        if a["task"] != "inpaint":
            raise common.InputError(f"{path}: a --task {a['task']} checkpoint; expected --task inpaint")
        key = (a["data"], a["judge_attr"], a["size"], a["region"])
        if key not in cache:  # the validation faces and their inputs (boxes unshifted, as face_aign evaluates)
            args = A.get_args(["--task", "inpaint", "--judge-attr", a["judge_attr"], "--size", str(a["size"]),
                               "--region", a["region"], "--judge", "cnn", "--no-progress"]
                              + (["--data", a["data"]] if a["data"] else []))
            data = A.load_data(args, common.Dist("cpu"))
            hr = A.to_float(data["val"])  # (N, 3, S, S)
            cache[key] = (args, *A.make_input(args, hr, torch.zeros(len(hr), 2, dtype=torch.long)),
                          data["val_labels"], A.make_judges(args, data)["cnn"])
        args, x, mask, labels, cnn = cache[key]
        G = A.build_nets(args, torch.device("cpu"))["G"]
        for name in ("G_ema", "G"):
            common.load_weights(G, state["nets"][name], path, name)
            G.eval()
            with torch.no_grad():
                y = torch.cat([A.generate(G, args, xb, mb) for xb, mb in zip(x.split(128), mask.split(128))])
            u8 = A.u8_of(y)  # (N, 3, S, S)
            s = fill_stats(u8, labels)
            rows.append([os.path.basename(os.path.dirname(os.path.abspath(path))), state["step"],
                         f"{name} (ema {a['ema']})" if name == "G_ema" else "G (raw)", f"{s['rate']:.3f}",
                         f"{s['rate_open']:.3f} / {s['rate_closed']:.3f}", f"{s['mean']:.3f}",
                         " / ".join(f"{q:.3f}" for q in s["quartiles"]),
                         f"{cnn.has(u8, args.judge_attr).float().mean().item():.3f}"])
    print("| " + " | ".join(HEAD) + " |\n|" + " --- |" * len(HEAD))
    print("\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows))


if __name__ == "__main__":
    common.run_main(lambda: main(sys.argv[1:]))
