#!/usr/bin/env bash
# Development sweep on the validation split (S10 of the built-in data): runs configs in parallel.
# usage: bash tools/pose_sweep.sh OUTDIR STEPS
set -u
out=$1; steps=$2; mkdir -p "$out"
run() { name=$1; shift; OMP_NUM_THREADS=1 python3 pose_aign.py --no-progress --steps "$steps" --eval-every 1000 --out "$out/$name" "$@" > "$out/$name.log" 2>&1; }
run sup5 --lambda-rec 0 --lambda-adv 0 --paired-frac 0.05 &
run bce001_p5 --lambda-adv 0.01 --paired-frac 0.05 &
run bce003_p5 --lambda-adv 0.03 --paired-frac 0.05 &
run ls02_p5 --gan lsgan --lambda-adv 0.2 --paired-frac 0.05 &
run ls005_p5 --gan lsgan --lambda-adv 0.05 --paired-frac 0.05 &
run bce001_p5_s10 --lambda-adv 0.01 --paired-frac 0.05 --lambda-sup 10 &
run ls02_p5_s10 --gan lsgan --lambda-adv 0.2 --paired-frac 0.05 --lambda-sup 10 &
run sup100 --lambda-rec 0 --lambda-adv 0 --paired-frac 1 &
run rec_p5 --lambda-adv 0 --paired-frac 0.05 &
run bce001 --lambda-adv 0.01 &
run ls02 --gan lsgan --lambda-adv 0.2 &
run bce001_p10 --lambda-adv 0.01 --paired-frac 0.1 &
run sup10 --lambda-rec 0 --lambda-adv 0 --paired-frac 0.1 &
wait
for f in "$out"/*.log; do echo "== $f"; grep -E "^step=|test:" "$f" | tail -2; done
