"""How far can a memory move the judged attribute while the output still explains its input? (no training)

    python3 tools/face_bound.py --split val     # built-in faces, gender and age pairs -> bench/faces_bound/bound_val.md
    python3 tools/face_bound.py --split test

An estimate, beside face_aign.py's contrast table, of what the opposite-memory contrast could be if G were
a perfect memory-driven sampler. For each low-resolution input x (the S/4 average-pooled face, as in
face_aign.py) and each memory (--bias A, --bias B: the same memory faces face_aign.py's runs use), take the
memory face m whose own rendering P(m) is nearest to x (L2), then make it explain x:
  - "memory face": m itself (LR PSNR of P(m) vs x: what the memory looks like through the renderer);
  - "at 30 dB": m moved towards explaining x until LR PSNR reaches 30 dB (the issue's constraint);
  - "exact": m with its low frequencies replaced by x's (iterated back-projection, LR PSNR >= 45 dB):
    the neighbour's detail on the input's face.
Both judges of face_aign.py judge each, and A - B is printed per judge, beside the same for bicubic (0 by
construction) and the judge's A - B on true faces. A retrieval sampler, not an upper bound: a learnt G could
draw detail better matched to x; but with these memories and judges, it shows what the detail channel carries.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import face_aign as A  # noqa: E402

PAIRS = {"gender (judged female)": ("-Male", "-Male", "Male"), "age (judged old)": ("-Young", "-Young", "Young")}


def nearest(x, mem_lr):
    """(N, 3, h, w), (M, 3, h, w) -> (N,) index of the nearest memory rendering (L2), in chunks."""
    flat = mem_lr.flatten(1)
    sq = (flat ** 2).sum(1)
    return torch.cat([(sq[None] - 2 * xs.flatten(1) @ flat.T).argmin(1) for xs in x.split(256)])


def explain(m, x, scale, iters=30):
    """m (N, 3, S, S) moved until P(m) = x: iterated back-projection m += bicubic(x - P(m))."""
    y = m.clone()
    for _ in range(iters):
        y = y + A.bicubic(x - A.render_sr(y, scale), scale)
    return y.clamp(-1, 1)


def lr_psnr(y, x, scale):
    """(N,) LR PSNR (dB, images in [0, 1]) of P(y) against the input x."""
    return A.psnr((A.render_sr(y, scale) + 1) / 2, (x + 1) / 2)


def at_psnr(m, exact, x, scale, target=30.0):
    """Per face, the point on the segment exact -> m whose LR PSNR is `target` (m itself if it already is)."""
    lo, hi = torch.zeros(len(m), 1, 1, 1), torch.ones(len(m), 1, 1, 1)
    for _ in range(20):  # bisection on t: y = exact + t (m - exact); LR PSNR falls as t grows
        t = (lo + hi) / 2
        ok = (lr_psnr(exact + t * (m - exact), x, scale) >= target).view(-1, 1, 1, 1)
        lo, hi = torch.where(ok, t, lo), torch.where(ok, hi, t)
    return (exact + lo * (m - exact)).clamp(-1, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=["val", "test"], default="val", help="faces to judge (default: val)")
    p.add_argument("--scale", type=int, default=4, help="SR factor (default: 4, face_aign.py's)")
    p.add_argument("--out", default="bench/faces_bound", help="folder of bound_<split>.md (default: bench/faces_bound)")
    args = p.parse_args()
    rows = ["| pair | judge | view | memory A | memory B | A − B | LR PSNR A / B (dB) |", "|" + " --- |" * 7]
    for pair, (attr, bias_a, bias_b) in PAIRS.items():
        views = {}
        for side, bias in (("A", bias_a), ("B", bias_b)):
            fa = A.get_args(["--bias", bias, "--judge-attr", attr, "--judge", "both", "--scale", str(args.scale),
                             "--no-progress"])
            data = A.load_data(fa, common.Dist("cpu"))  # the same val/test faces and judge data for A and B
            hr = A.to_float(data[args.split])                     # (N, 3, S, S), balanced on attr
            x = A.render_sr(hr, args.scale)                       # (N, 3, S/k, S/k): G's input
            mem = A.to_float(data["mem"])                         # (M, 3, S, S): this memory's faces
            m = mem[nearest(x, A.render_sr(mem, args.scale))]     # (N, 3, S, S)
            exact = explain(m, x, args.scale)
            for name, y in (("bicubic", A.bicubic(x, args.scale).clamp(-1, 1)), ("memory face", m),
                            ("at 30 dB", at_psnr(m, exact, x, args.scale)), ("exact", exact)):
                views.setdefault(name, {})[side] = (y, lr_psnr(y, x, args.scale).clamp(max=100).mean().item())
        for jname, judge in A.make_judges(fa, data).items():
            for name, side in views.items():
                ra, rb = (judge.has(A.u8_of(side[s][0]), attr).float().mean().item() for s in "AB")
                rows.append(f"| {pair} | {jname} | {name} | {ra:.3f} | {rb:.3f} | **{100 * (ra - rb):+.1f}** | "
                            f"{side['A'][1]:.1f} / {side['B'][1]:.1f} |")
            acc = (judge.has(data[args.split], attr) == data[f"{args.split}_labels"]).float().mean().item()
            rows.append(f"| {pair} | {jname} | true faces (2·accuracy − 1) | – | – | {100 * (2 * acc - 1):+.1f} | – |")
    md = (f"{args.split} faces ({len(hr)} per pair, balanced), x{args.scale}, memory A / B = --bias "
          f"{' / '.join(f'{a} {b}' for _, a, b in PAIRS.values())}:\n\n" + "\n".join(rows)
          + f"\n\n`python3 tools/face_bound.py {' '.join(sys.argv[1:])}`\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"bound_{args.split}.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    common.run_main(main)
