#!/usr/bin/env bash
# The CUDA checks in one command, for a machine with a GPU (about 5 minutes on one H200):
#   bash tools/device_check.sh [OUT]        # default OUT: $OUT, else /tmp/device_check
#   DEV=cpu BATCHES=256 bash tools/device_check.sh /tmp/dc     # the same steps on the CPU: checks this script
# 1. tests/test_device.py: the renderers and pose's training step on cuda against the CPU;
# 2. each script trains 20 steps on cuda through its command line (pose and sfm on their built-in data,
#    face on a folder of 200 noise images: its built-in faces need optional packages);
# 3. train_step throughput on cuda: pose at batch 256, 1024, 4096, 16384, sfm and face at their defaults,
#    and pose on the CPU beside it; everything lands in OUT/throughput.json, the logs in OUT/log.txt.
# It installs nothing: it needs a python3 with torch (CUDA), numpy, imageio, tqdm and pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/device_check}}
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 AIGN_CACHE=${AIGN_CACHE:-$work/cache}
exec > >(tee "$out/log.txt") 2>&1
failed=()
step() { "$@" || failed+=("$*"); }  # every step runs; the failures are listed at the end
dev=${DEV:-cuda}
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
step python3 -m pytest -q -p no:cacheprovider tests/test_device.py
python3 - "$work/faces" <<'EOF'
import os, sys
import imageio.v3 as iio
import numpy as np
os.makedirs(sys.argv[1])
for i, img in enumerate(np.random.default_rng(0).integers(0, 256, (200, 64, 64, 3), dtype=np.uint8)):
    iio.imwrite(os.path.join(sys.argv[1], f"{i:03d}.png"), img)
EOF
run=(--device $dev --steps 20 --eval-every 10 --no-progress)
step python3 pose_aign.py "${run[@]}" --out "$work/pose"
step python3 sfm_aign.py "${run[@]}" --out "$work/sfm"
step python3 face_aign.py "${run[@]}" --data "$work/faces" --judge none --out "$work/face"
for b in ${BATCHES:-256 1024 4096 16384}; do
    step python3 tools/pose_bench.py --throughput --device $dev --out "$work/bench/pose_${dev}_$b" -- --batch-size $b
done
step python3 tools/pose_bench.py --throughput --device cpu --threads "$(nproc)" --out "$work/bench/pose_cpu_256_threads"
step python3 tools/sfm_bench.py --throughput --device $dev --out "$work/bench/sfm_$dev"
step python3 tools/face_bench.py --throughput --out "$work/bench/face_$dev" -- --device $dev --data "$work/faces" --judge none
python3 - "$work/bench" "$out/throughput.json" <<'EOF'
import glob, json, os, sys
runs = {os.path.basename(os.path.dirname(f)): json.load(open(f))
        for f in sorted(glob.glob(os.path.join(sys.argv[1], "*", "bench.json")))}
json.dump(runs, open(sys.argv[2], "w"), indent=1)
for name, r in runs.items():
    print(name, {k: r[k] for k in ("samples_per_s", "images_per_s", "step_ms", "step_s", "fraction_of_peak") if k in r})
EOF
if ((${#failed[@]})); then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "all device checks passed"
