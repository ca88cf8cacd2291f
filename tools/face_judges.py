"""The two judges of face_aign.py against blur alone, and the mouth judges' paste test.

    python3 tools/face_judges.py                 # built-in faces: -Male, -Young, Mouth_Slightly_Open -> bench/faces/judges.md

Blur: judged rates of the balanced test faces and of blurred copies (bicubic upsampling of k x k average
pooling, i.e. the SR baseline, and a Gaussian), for the ONNX judge (age/gender models; the mouth rule
for Mouth_Slightly_Open) and the CNN judge (trained once on held-out faces with blur augmentation;
target: bicubic x4 moves it by <= 5 points). Paste: the mouth box of a donor test face pasted into a
host test face; the judged score of the result is fit as a * donor + b * host + c (target a >= 0.7,
b <= 0.3), and for donor/host pairs with opposite labels the share judged like the donor. No training
of G is involved.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import face_aign as A  # noqa: E402
import face_builtin  # noqa: E402


def gaussian_blur(y, sigma):
    """(B, 3, S, S) -> the same, blurred by a separable Gaussian (replicate padding)."""
    r = int(3 * sigma)
    g = torch.exp(-torch.arange(-r, r + 1.0).pow(2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None]).expand(3, 1, 2 * r + 1, 2 * r + 1)
    return F.conv2d(F.pad(y, (r, r, r, r), mode="replicate"), kernel, groups=3)


def paste_fit(score, faces, region, seed=0):
    """Paste the `region` box of donor faces into host faces (uint8 (N, 3, S, S)); least squares of
    score(pasted) on [score(donor), score(host), 1] -> (a, b)."""
    g = torch.Generator().manual_seed(seed)
    donor, host = torch.randperm(len(faces), generator=g), torch.randperm(len(faces), generator=g)
    s = faces.shape[-1]
    y0, y1, x0, x1 = (round(f * s) for f in A.BOXES[region])
    pasted = faces[host].clone()
    pasted[:, :, y0:y1, x0:x1] = faces[donor][:, :, y0:y1, x0:x1]
    sp, sd, sh = (score(t).double().numpy() for t in (pasted, faces[donor], faces[host]))
    (a, b, _), *_ = np.linalg.lstsq(np.stack([sd, sh, np.ones_like(sd)], 1), sp, rcond=None)
    return a, b, pasted, donor, host


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attrs", nargs="+", default=["-Male", "-Young", "Mouth_Slightly_Open"],
                   help="judged attributes (default: -Male -Young Mouth_Slightly_Open)")
    p.add_argument("--out", default="bench/faces", help="folder of judges.md (default: bench/faces)")
    args = p.parse_args(A.glue_negated(sys.argv[1:], ("--attrs",)))
    lines = ["| judged attribute | judge | ground truth | bicubic x2 | bicubic x4 | bicubic x8 | Gaussian σ 1 px "
             "| x4 blur shift (points) | accuracy on test labels |", "|" + " --- |" * 9]
    paste = []
    for attr in args.attrs:
        fa = A.get_args(["--judge-attr", attr, "--judge", "both", "--no-progress"])
        data = A.load_data(fa, common.Dist("cpu"))
        judges = A.make_judges(fa, data)
        hr = A.to_float(data["test"])  # (N, 3, 64, 64) in [-1, 1], balanced on attr
        views = [hr] + [A.bicubic(A.render_sr(hr, k), k).clamp(-1, 1) for k in (2, 4, 8)] + [gaussian_blur(hr, 1.0)]
        for name, judge in judges.items():
            rates = [judge.has(A.u8_of(y), attr).float().mean().item() for y in views]
            acc = (judge.has(data["test"], attr) == data["test_labels"]).float().mean().item()
            lines.append(f"| {attr} ({len(hr)} test faces) | {name} | " + " | ".join(f"{r:.3f}" for r in rates)
                         + f" | {100 * (rates[2] - rates[0]):+.1f} | {acc:.3f} |")
        if attr.lstrip("-") == "Mouth_Slightly_Open":
            scores = {"onnx (mouth rule: dark fraction)": face_builtin.mouth_dark_frac,
                      "cnn (probability)": lambda u8: torch.sigmoid(judges["cnn"](u8).detach())}
            for name, score in scores.items():
                a, b, pasted, donor, host = paste_fit(score, data["test"], "mouth")
                j = judges[name.split()[0]]
                ld, lh, lp = (j.has(t, attr) for t in (data["test"][donor], data["test"][host], pasted))
                differ = ld != lh
                follows = (lp[differ] == ld[differ]).float().mean().item()
                paste.append(f"| {name} | {a:.3f} | {b:.3f} | {follows:.3f} ({int(differ.sum())} pairs) |")
    md = ("Blur alone (no training):\n\n" + "\n".join(lines) + "\n\nPaste test (mouth box of a donor test face in a "
          "host test face; score(pasted) = a * donor + b * host + c):\n\n| judge | donor weight a | host weight b | "
          "judged like the donor where labels differ |\n| --- | --- | --- | --- |\n" + "\n".join(paste)
          + "\n\n`python3 tools/face_judges.py " + " ".join(sys.argv[1:]) + "`\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "judges.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    common.run_main(main)
