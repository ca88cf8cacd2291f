"""How the built-in attribute judge reacts to blur alone: judged rates of the balanced test faces and
of blurred copies (bicubic upsampling of k x k average pooling, i.e. the SR baseline, and a Gaussian).

    python3 tools/face_judge_blur.py                   # -Male (female) and -Young (old), built-in faces

No training is involved; the rates show what a sharper or blurrier output does to the judge by
itself, which the bias targets of face_aign.py must be read against.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import face_aign as A  # noqa: E402
from face_builtin import OnnxJudge  # noqa: E402


def gaussian_blur(y, sigma):
    """(B, 3, S, S) -> the same, blurred by a separable Gaussian (replicate padding)."""
    r = int(3 * sigma)
    g = torch.exp(-torch.arange(-r, r + 1.0).pow(2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None]).expand(3, 1, 2 * r + 1, 2 * r + 1)
    return F.conv2d(F.pad(y, (r, r, r, r), mode="replicate"), kernel, groups=3)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attrs", nargs="+", default=["-Male", "-Young"], help="judged attributes (default: -Male -Young)")
    args = p.parse_args()
    judge = OnnxJudge()
    print("| judged attribute | ground truth | bicubic x2 | bicubic x4 | bicubic x8 | Gaussian blur sigma 1 px |")
    print("| --- | --- | --- | --- | --- | --- |")
    for attr in args.attrs:
        fa = A.get_args(["--judge-attr", attr, "--no-progress"])
        data = A.load_data(fa, common.Dist("cpu"))
        hr = A.to_float(data["test"])  # (N, 3, 64, 64) in [-1, 1], balanced on attr
        views = [hr] + [A.bicubic(A.render_sr(hr, k), k).clamp(-1, 1) for k in (2, 4, 8)] + [gaussian_blur(hr, 1.0)]
        rates = [judge.has(A.u8_of(y), attr).float().mean().item() for y in views]
        print(f"| {attr} ({len(hr)} test faces) | " + " | ".join(f"{r:.3f}" for r in rates) + " |")


if __name__ == "__main__":
    common.run_main(main)
