"""Plumbing shared by pose_aign.py, sfm_aign.py and face_aign.py.

Only non-algorithmic helpers live here: the shared command-line vocabulary, seeding, device choice,
torchrun/DDP setup, the run folder (args, versions, command, metrics.jsonl, results.json), atomic
checkpoints that load with ``weights_only=True``, clear input errors, image/GIF writing and the
``--bench`` helpers. Models, renderers and losses stay in the task scripts, so each script can be
copied and modified alone (together with this file).
"""
import datetime
import json
import os
import platform
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


# ----------------------------------------------------------------------------------------------
# Errors: bad input stops the program with one clear line, never a traceback deep inside torch.
class InputError(Exception):
    """A user-facing error: what file, what layout was expected, what was found."""


def run_main(main):
    """Call ``main()``; turn an InputError into one line on stderr and exit status 2."""
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# The command-line vocabulary every script shares (task flags are added by each script).
def add_common_args(p, *, steps, batch_size, lr, eval_every):
    """Add the flags all three scripts share; the defaults are the script's own."""
    p.add_argument("--data", default=None,
                   help="dataset path (see README for the layouts); default: the built-in dataset")
    p.add_argument("--out", default=None,
                   help="run folder; default: runs/<script>-<time>, or the --resume checkpoint's folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--steps", type=int, default=steps,
                   help=f"total training steps, counted from step 0 also when resuming (default: {steps})")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"batch size per process (default: {batch_size})")
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default: {lr})")
    p.add_argument("--eval-every", type=int, default=eval_every,
                   help=f"evaluate and checkpoint every N steps (default: {eval_every})")
    p.add_argument("--resume", default=None, help="checkpoint to continue from or evaluate (default: none)")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate the --resume checkpoint on --data (default: off)")
    p.add_argument("--predict", default=None,
                   help="run the --resume model on this input and write predictions to --out (default: off)")
    p.add_argument("--deterministic", action="store_true",
                   help="ask torch for deterministic kernels (slower on CUDA; default: off)")
    p.add_argument("--bench", action="store_true",
                   help="measure throughput and the fraction of the matmul peak reached, then exit (default: off)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    return p


# ----------------------------------------------------------------------------------------------
# Seeding, device, distributed.
def seed_everything(seed, deterministic=False):
    """Seed Python, NumPy and torch (all devices); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def pick_device(name, local_rank=0):
    """'auto' -> cuda:<local_rank> if available else cpu; 'cuda' asked for without a GPU is an error."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: only cpu and cuda are supported")
    return device


class Dist:
    """torchrun/DDP state. Single-process runs get rank 0 of world 1 and no process group."""

    def __init__(self, device_arg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = pick_device(device_arg, self.local_rank)
        if self.world > 1 and not dist.is_initialized():
            # gloo runs on CPU everywhere; nccl is the engine for CUDA tensors.
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend)

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj):
        """Send a picklable Python object from rank 0 to all ranks (plain data only)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_grads(self, *modules):
        """DDP's gradient all-reduce by hand (one flat all_reduce), for nets that are not wrapped in
        DDP: e.g. discriminators, whose gradients a generator loss also reaches, or whose gradient
        penalty needs double backward."""
        if self.world == 1:
            return
        params = [p for m in modules for p in m.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def any(self, flag):
        """True on every rank if it is True on any rank (e.g. a stop request that reached one process)."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item() > 0

    def mean(self, value):
        """Mean of a float over ranks (for logging losses)."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.item() / self.world


# ----------------------------------------------------------------------------------------------
# Run folder: args, versions, command; metrics.jsonl; results.json.
def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def make_run_dir(args, script, dist_state):
    """Create the run folder (rank 0 picks the name) and store args, versions and the command."""
    out = args.out
    if out is None and args.resume:
        out = os.path.dirname(os.path.abspath(args.resume))
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join("runs", f"{script}-{stamp}")
    out = dist_state.broadcast(out)
    if dist_state.main:
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, "args.json"), vars(args))
        write_json(os.path.join(out, "versions.json"), versions())
        with open(os.path.join(out, "command.txt"), "a") as f:
            f.write(" ".join([os.path.basename(sys.executable)] + sys.argv) + "\n")
    dist_state.barrier()
    return out


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


class MetricsLog:
    """Append-only metrics.jsonl. On resume, records past the checkpoint's step are dropped, so a
    resumed run's log reads exactly like an uninterrupted one (no repeated steps)."""

    def __init__(self, run_dir, resume_step=None, enabled=True):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.enabled = enabled
        if enabled and resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(keep)
        elif enabled and resume_step is None and os.path.exists(self.path):
            os.remove(self.path)  # a fresh run in an old folder starts a fresh log

    def write(self, record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")


def log(msg, dist_state=None):
    """Print a line without breaking the progress bar (rank 0 only)."""
    if dist_state is None or dist_state.main:
        tqdm.write(msg)


def progress(start, total, dist_state, disable=False):
    return tqdm(range(start, total), initial=start, total=total, dynamic_ncols=True,
                disable=disable or not dist_state.main or start >= total)


# ----------------------------------------------------------------------------------------------
# Checkpoints: plain tensors and values, written atomically, loaded with weights_only=True.
def rng_state():
    """All global RNG states as plain values/tensors (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {"python": repr(random.getstate()),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    import ast
    random.setstate(ast.literal_eval(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, state):
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu", required=("step",)):
    """Load a checkpoint without executing code; any failure is one clear InputError."""
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that are not plain data
        raise InputError(f"checkpoint {path}: cannot be read as a torch checkpoint of plain tensors "
                         f"and values (corrupt, truncated or not a checkpoint: {type(e).__name__})") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"checkpoint {path}: not a checkpoint of this script (missing {missing})")
    return state


class StopRequest:
    """SIGINT/SIGTERM set a flag; the training loop finishes its step, checkpoints and exits, so an
    interrupted run resumes without losing or repeating work."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True


# ----------------------------------------------------------------------------------------------
# Data files: .npz read without pickles, with clear messages.
def load_npz(path, required=(), what="an npz file"):
    """np.load with allow_pickle=False; a missing file or key is an InputError naming the layout."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected {what})")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as e:
        raise InputError(f"{path}: holds pickled objects, which are not loaded for safety "
                         f"(expected {what}; {e})") from None
    except Exception as e:
        raise InputError(f"{path}: cannot be read as .npz (expected {what}; {type(e).__name__}: {e})") from None
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}; found {sorted(data)} (expected {what})")
    return data


# ----------------------------------------------------------------------------------------------
# Figures: images and GIFs through imageio (no plotting library).
def to_uint8(img):
    """float array/tensor in [0, 1] (H, W, 3) or (3, H, W) -> uint8 (H, W, 3)."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


def image_grid(rows, pad=2, bg=255):
    """rows: list of lists of (H, W, 3) images of one size -> one uint8 image with padding."""
    rows = [[to_uint8(im) for im in row] for row in rows]
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), bg, np.uint8)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = im
    return grid


def write_png(path, img):
    import imageio.v3 as iio
    iio.imwrite(path, to_uint8(img))


def write_gif(path, frames, fps=10):
    import imageio.v2 as imageio
    imageio.mimsave(path, [to_uint8(f) for f in frames], duration=1.0 / fps, loop=0)


# ----------------------------------------------------------------------------------------------
# --bench helpers: FLOPs of a step and the machine's measured matmul peak.
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_dir(name):
    """Folder for built-in datasets built on first use: $AIGN_CACHE/<name>, default ~/.cache/aign."""
    root = os.environ.get("AIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "aign")
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    return path
