"""Timing helpers of the benchmark tools (tools/*_bench.py): FLOPs of a step, the machine's measured
matmul peak, and the mean wall time of a function. The training scripts never import this file."""
import time

import torch

from common import sync  # the tools put the repository root on sys.path before importing this


def count_flops(fn):
    """Run fn() once under torch's flop counter; returns the counted FLOPs (matmul/conv dominated)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device, dtype=torch.float32, n=None, seconds=1.0):
    """Measured FLOP/s of a large square matmul on this device: the ceiling a step is compared with."""
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def time_per_call(fn, device, reps=20, warmup=3):
    """Mean seconds of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps
