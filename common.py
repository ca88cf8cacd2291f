"""Plumbing shared by pose_aign.py, sfm_aign.py and face_aign.py.

Only non-algorithmic helpers live here: the shared command-line vocabulary and its checks, seeding,
device choice, torchrun/DDP, the run folder (lock, args, versions, command, metrics.jsonl,
results.json), checkpoints with one set of keys that load with ``weights_only=True``, safe readers
for data files that turn every failure into one clear ``InputError``, and image/GIF writing.
Models, renderers and losses stay in the task scripts: each script, copied alone with this file,
runs on a user's data.
"""
import argparse
import ast
import atexit
import contextlib
import ctypes
import datetime
import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
import platform
import random
import signal
import socket
import sys
import time
import zipfile

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm


# ----------------------------------------------------------------------------------------------
# Errors: bad input stops the program with one clear line, never a traceback deep inside torch.
class InputError(Exception):
    """A user-facing error: which file or flag, what was expected, what was found."""


def run_main(main):
    """Call ``main()``; an InputError becomes one line on stderr and exit status 2."""
    code = 0
    try:
        main()
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # a finished run: no rank tears its process group down while another still talks
    except InputError as e:
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()  # an open progress bar (reading files) must not share the error's line
        print(f"error: {e}", file=sys.stderr)
        _remove_unused_run_dirs()
        code = 2
    finally:
        release_lock()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose work is done and written ends here, skipping the interpreter's
        # teardown, where a C++ thread of the distributed runtime rarely aborted the process
        # ("terminate called without an active exception") after a clean run. Every file is closed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code:
        sys.exit(code)


OPTION_DESTS = {}  # every flag the scripts' parsers define -> its dest ("--lr-d" and "--d-lr" -> "d_lr")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (a wrong type or choice, an unknown flag) are an InputError: one line."""

    def error(self, message):
        raise InputError(message)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        OPTION_DESTS.update(dict.fromkeys(action.option_strings, action.dest))
        return action


# ----------------------------------------------------------------------------------------------
# The command-line vocabulary every script shares (method flags are added by each script, with the
# same names in all three: --memory, --paired-frac, --lambda-rec, --lambda-adv, --lambda-sup, --gan).
def add_common_args(p, *, steps, batch_size, lr, eval_every):
    """Add the run flags all three scripts share; the defaults are the script's own (``steps`` may be a
    text such as "400 sr, 800 inpaint": --steps then defaults to None and the script fills it in)."""
    p.add_argument("--data", default=None,
                   help="dataset path (layouts: below, and README); default: the built-in dataset")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/<script>-<time>; with --resume its folder, with "
                        "--eval-only/--predict a new eval-<time>/predict-<time> folder beside it)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--steps", type=int, default=steps if isinstance(steps, int) else None,
                   help=f"total training steps, counted from step 0 also when resuming (default: {steps})")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"batch size per process (default: {batch_size})")
    p.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default: {lr})")
    p.add_argument("--eval-every", type=int, default=eval_every,
                   help=f"checkpoint and evaluate every N steps (default: {eval_every})")
    p.add_argument("--resume", default=None, help="checkpoint to continue from (the run's flags come back "
                   "unless given again) or to evaluate (default: none)")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate the --resume checkpoint on --data (default: off)")
    p.add_argument("--predict", default=None,
                   help="run the --resume model on this input and write predictions (default: off)")
    p.add_argument("--deterministic", action="store_true",
                   help="ask torch for deterministic kernels (slower on CUDA; default: off)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    return p


def check_args(args, nonneg_ints=(), positive_ints=()):
    """One validation of the shared values, so a typo stops the run before anything is written:
    steps >= 0, eval-every >= 1, batch >= 1, seed in [0, 2^63), finite lr > 0, every --lambda-* finite >= 0,
    every --*-frac in [0, 1]; plus the script's own integer flags (by attribute name)."""
    def bad(flag, want, value):
        raise InputError(f"--{flag.replace('_', '-')} {value}: expected {want}")
    for name in ("steps", "seed", *nonneg_ints):
        if getattr(args, name) < 0:
            bad(name, "an integer >= 0", getattr(args, name))
    if args.seed >= 2**63:
        bad("seed", "an integer in [0, 2^63)", args.seed)
    for name in ("eval_every", "batch_size", *positive_ints):
        if getattr(args, name) < 1:
            bad(name, "an integer >= 1", getattr(args, name))
    for name, value in vars(args).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name.startswith("lr") and not (math.isfinite(value) and value > 0):
            bad(name, "a finite number > 0", value)
        if name.startswith("lambda_") and not (math.isfinite(value) and value >= 0):
            bad(name, "a finite number >= 0", value)
        if name.endswith("_frac") and not 0 <= value <= 1:
            bad(name, "a fraction in [0, 1]", value)
    if (args.eval_only or args.predict) and not args.resume:
        raise InputError("--eval-only and --predict need --resume CHECKPOINT")
    if args.eval_only and args.predict:
        raise InputError("--eval-only and --predict: choose one")


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
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available here (torch {torch.__version__})")
    if device.type == "cuda":
        if (device.index or 0) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(device)  # the current device: checkpoints keep its RNG state
    return device


def busy_cpus(samples=5, gap=0.02):
    """How many CPUs other processes keep busy: the runnable tasks of /proc/stat ('procs_running', this
    one included) minus 1, the smallest of a few samples (a CPU-bound neighbour counts, a passing shell
    does not); 0 where /proc/stat does not exist."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                counts += [int(line.split()[1]) - 1 for line in f if line.startswith("procs_running")]
        except (OSError, ValueError, IndexError):
            return 0
        if i + 1 < samples:
            time.sleep(gap)
    return max(0, min(counts, default=1))


def cpu_threads(default, cpus, busy):
    """Compute threads for this process: torch's default on an idle machine (results unchanged), one
    fewer per CPU that other processes keep busy, at least 1. More threads than free CPUs make OpenMP's
    threads wait on each other behind the neighbours (a 2-thread step 4x slower beside one busy process)."""
    return max(1, min(default, cpus - busy))


def keep_freed_memory():
    """glibc's malloc hands freed heap back to the system at once and maps big buffers afresh, so every
    CPU training step page-faulted its buffers in again (sfm: ~4,000-15,000 faults a step, ~8% of it).
    Keep freed memory for reuse instead: same numbers, a no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: buffers below 32 MB come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of freed heap


class Dist:
    """torchrun state. Single-process runs get rank 0 of world 1 and no process group.

    Data parallelism is DistributedDataParallel's rule done by hand, the same way in all three
    scripts: every rank starts from the same seed (identical weights), draws the same global batch
    and keeps its slice, and after each backward ``average_grads`` all-reduces the gradients of the
    nets being stepped. Unlike the DDP wrapper this also holds for discriminators, whose parameters
    a generator loss reaches too, and for the double backward of a gradient penalty."""

    def __init__(self, device_arg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = pick_device(device_arg, self.local_rank)
        keep_freed_memory()
        if "OMP_NUM_THREADS" not in os.environ:  # the user's or torchrun's thread count is kept
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            threads = cpu_threads(torch.get_num_threads(), cpus or 1, busy_cpus())
            if threads != torch.get_num_threads():
                log(f"{threads} compute thread(s): other processes keep CPUs busy "
                    "(OMP_NUM_THREADS chooses)", self)
                torch.set_num_threads(threads)
        if self.world > 1 and not dist.is_initialized():
            # gloo runs on CPU everywhere; nccl is the engine for CUDA tensors.
            backend = "nccl" if self.device.type == "cuda" else "gloo"  # pick_device set the CUDA device
            dist.init_process_group(backend)
        self._comm = self.device if self.device.type == "cuda" else torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj):
        """Send a small Python value (str, number, dict of them) from rank 0 to all ranks."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_grads(self, *modules):
        """The gradient all-reduce of data parallelism (one flat all_reduce over the given nets)."""
        if self.world == 1:
            return
        params = [p for m in modules for p in m.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p))

    def any(self, flag):
        """True on every rank if it is True on any rank: a stop request that reached one process
        stops all of them at the same step (no rank waits forever in a collective)."""
        return self.mean(float(flag)) > 0

    def mean(self, value):
        """Mean of a float over ranks (for logging losses)."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm)
        dist.all_reduce(t)
        return t.item() / self.world


def optimiser_step(opt, loss, dist_state=None, *modules):
    """The plumbing of one update: zero the gradients, backpropagate `loss`, all-reduce the
    gradients of `modules` over ranks (data parallelism; skipped with dist_state=None, e.g. for a
    net only rank 0 trains), step the optimiser."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if dist_state is not None:
        dist_state.average_grads(*modules)
    opt.step()


def stop_if_diverged(losses, step, dist_state, nets=None):
    """A loss or a weight (of the {name: module} nets) that turned NaN/inf stops the run with one clear
    line, before its checkpoint is written (the last good one stays): mostly inputs far outside their
    documented units, or too high a --lr."""
    bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
    bad += [f"{k}'s weights" for k, m in (nets or {}).items()
            if not all(bool(torch.isfinite(p).all()) for p in m.parameters())]
    if dist_state.any(bool(bad)):
        what = ", ".join(bad) or "a loss on another rank"
        raise InputError(f"training diverged by step {step}: {what} became NaN/inf (the last checkpoint, if "
                         "any, is kept); check that the inputs are in the units and ranges --help documents, "
                         "or lower --lr")


def sync(device):
    """Wait for queued CUDA work (timings); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# Run folder: a lock, args, versions, command; metrics.jsonl; results.json.
def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


_LOCK = []  # the lock file this process holds, removed at exit
_NEW_RUN_DIRS = []  # run folders this process created: removed again if a bad input stops it at once
_BOOKKEEPING = {"args.json", "versions.json", "command.txt", "run.lock"}


def _remove_unused_run_dirs():
    import shutil
    for path, top in _NEW_RUN_DIRS:  # top: the outermost folder that making `path` created
        if os.path.isdir(path) and set(os.listdir(path)) <= _BOOKKEEPING:
            shutil.rmtree(path, ignore_errors=True)
            while path != top and os.path.isdir(os.path.dirname(path)):
                path = os.path.dirname(path)
                if os.listdir(path):
                    break
                os.rmdir(path)


def release_lock():
    while _LOCK:
        path = _LOCK.pop()
        try:
            os.remove(path)
        except OSError:
            pass


def acquire_lock(run_dir):
    """One run per folder: run.lock holds host and pid; a lock of a process that is gone is taken over."""
    path = os.path.join(run_dir, "run.lock")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = _lock_holder(path)
        if holder:
            raise InputError(f"--out {run_dir}: another run (host {holder[0]}, pid {holder[1]}) is using "
                             f"this folder; wait for it, choose another --out, or delete {path} if that "
                             f"run is gone") from None
        os.remove(path)
        return acquire_lock(run_dir)
    with os.fdopen(fd, "w") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}")
    _LOCK.append(path)
    atexit.register(release_lock)


def _lock_holder(path):
    """(host, pid) of the run holding this lock, or None if that process is gone (or the file is a
    crashed run's unreadable leftover). Another host's lock is taken as held."""
    try:
        with open(path) as f:
            host, pid = f.read().split()
        if host == socket.gethostname():
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # it exists, under another user
        pass
    except ValueError:  # empty or cut: a run that is writing it right now, else a crashed run's leftover
        recent = time.time() - os.path.getmtime(path) < 10 if os.path.exists(path) else False
        return ("?", "? (starting)") if recent else None
    except OSError:  # ProcessLookupError included
        return None
    return host, pid


def make_run_dir(args, script, dist_state):
    """Create and lock the run folder (rank 0 picks the name) and store args, versions and command.
    Default: runs/<script>-<time>; with --resume the checkpoint's folder; with --eval-only or
    --predict a new eval-<time>/predict-<time> folder beside the checkpoint."""
    out = args.out
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if out is None and args.resume:
        out = os.path.dirname(os.path.abspath(args.resume))
        if args.eval_only or args.predict:
            out = os.path.join(out, f"{'predict' if args.predict else 'eval'}-{stamp}")
    if out is None:
        out = os.path.join("runs", f"{script}-{stamp}")
    out = dist_state.broadcast(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out}: is a file; expected a run folder (new or existing)")
    if dist_state.main:
        top = os.path.abspath(out)
        while not os.path.exists(os.path.dirname(top)):
            top = os.path.dirname(top)
        if not os.path.exists(out):
            _NEW_RUN_DIRS.append((os.path.abspath(out), top))
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise InputError(f"--out {out}: cannot create the run folder ({e.strerror})") from None
        acquire_lock(out)
        write_json(os.path.join(out, "args.json"), vars(args))
        write_json(os.path.join(out, "versions.json"), versions())
        with open(os.path.join(out, "command.txt"), "a") as f:
            f.write(" ".join([os.path.basename(sys.executable)] + sys.argv) + "\n")
    dist_state.barrier()
    return out


def _tmp(path):
    return f"{path}.tmp{os.getpid()}"  # per process: two writers never share a temporary file


def save_torch(path, obj):
    """torch.save, atomically: a crash mid-write leaves the previous file intact."""
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


class MetricsLog:
    """Append-only metrics.jsonl. On resume (state: the checkpoint), records past its step are dropped and
    the checkpoint's own record is written if a run stopped before logging it (killed while validating:
    finish(record) adds the validation metrics again), so a resumed run's log reads exactly like an
    uninterrupted one (no repeated or missing steps)."""

    def __init__(self, run_dir, state=None, enabled=True, finish=None):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.enabled = enabled
        keep, steps = [], set()
        if enabled and os.path.exists(self.path):
            if state is not None:  # a fresh run in an old folder starts a fresh log
                with open(self.path, errors="replace") as f:
                    for line in f:
                        try:
                            if (step := json.loads(line).get("step", 0)) <= state["step"]:
                                keep.append(line)
                                steps.add(step)
                        except (ValueError, AttributeError):
                            pass  # a line cut by a crash mid-write
            with open(self.path, "w") as f:
                f.writelines(keep)
        pending = state.get("record") if state is not None else None
        if enabled and isinstance(pending, dict) and state["step"] not in steps and finish is not None:
            self.write(finish(dict(pending)))

    def write(self, record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")


def format_record(record):
    """{name: value} -> 'name=value ...' for log lines (floats to 4 significant digits)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


def log(msg, dist_state=None):
    """Print a line without breaking the progress bar (rank 0 only)."""
    if dist_state is None or dist_state.main:
        tqdm.write(msg)


def progress(start, total, dist_state, disable=False):
    return tqdm(range(start, total), initial=start, total=total, dynamic_ncols=True,
                disable=disable or not dist_state.main or start >= total)


class StopRequest:
    """SIGINT/SIGTERM set a flag; the training loop finishes its step, checkpoints and exits, so an
    interrupted run resumes without losing or repeating work. Check it with Dist.any."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True


# ----------------------------------------------------------------------------------------------
# Checkpoints: one set of keys in all three scripts, plain tensors and values, written atomically,
# loaded with weights_only=True (loading never executes code).
CKPT_KEYS = ("script", "step", "args", "nets", "opts", "rng", "data_rng", "wall_s", "samples")


def rng_state():
    """All global RNG states as plain values/tensors (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {"python": repr(random.getstate()),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       *map(float, np_state[2:])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's device (every rank's alike)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(ast.literal_eval(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])  # the current device: rank r's own


def save_checkpoint(path, *, script, step, args, nets, opts, data_rng, wall_s, samples, **extra):
    """Write {script, step, args, nets, opts, rng, data_rng, wall_s, samples, **extra} atomically
    (a crash mid-write leaves the previous checkpoint intact). nets/opts: dicts name -> module/optimiser;
    wall_s and samples are the run's training seconds and samples so far (throughput = their ratio,
    so resuming a finished run keeps its recorded numbers); the scripts add `record`, the training part of
    this step's metrics.jsonl line (MetricsLog writes it on resume if the run stopped before logging it)."""
    state = {"script": script, "step": step, "args": vars(args),
             "nets": {k: m.state_dict() for k, m in nets.items()},
             "opts": {k: o.state_dict() for k, o in opts.items()},
             "rng": rng_state(), "data_rng": data_rng.get_state(), "wall_s": float(wall_s),
             "samples": int(samples), **extra}
    save_torch(path, state)


def load_checkpoint(path, script, nets=()):
    """Load a checkpoint of `script` without executing code and check it holds `nets`; any
    failure is one clear InputError (missing, corrupt, another script's, missing keys)."""
    if not os.path.isfile(path):
        raise InputError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that are not plain data
        raise InputError(f"--resume {path}: cannot be read as a torch checkpoint of plain tensors and "
                         f"values (corrupt, truncated or not a checkpoint: {type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("script") != script:
        found = state.get("script") if isinstance(state, dict) else type(state).__name__
        raise InputError(f"--resume {path}: not a checkpoint of {script}.py (found {found!r})")
    missing = [k for k in CKPT_KEYS if k not in state]
    missing += [f"nets/{k}" for k in nets if k not in state.get("nets", {})]
    if missing or not isinstance(state["args"], dict):
        found = f"missing {missing}" if missing else f"args is {type(state['args']).__name__}, not a dict"
        raise InputError(f"--resume {path}: incomplete checkpoint of {script}.py ({found})")
    kinds = {"step": int, "samples": int, "wall_s": (int, float), "nets": dict, "opts": dict}
    wrong = [f"{k} is {type(state[k]).__name__}" for k, t in kinds.items()
             if isinstance(state[k], bool) or not isinstance(state[k], t)]
    if wrong or state["step"] < 0:
        raise InputError(f"--resume {path}: a damaged checkpoint of {script}.py ({', '.join(wrong) or 'step < 0'}"
                         f"; expected step and samples integers >= 0, wall_s a number, nets and opts dicts)")
    return state


def arch_from_checkpoint(args, state, names, path):
    """The network shape comes from the checkpoint: copy these args over the command line's."""
    missing = [k for k in names if k not in state["args"]]
    if missing:
        raise InputError(f"--resume {path}: checkpoint args lack {missing}")
    for k in names:
        setattr(args, k, state["args"][k])


NOT_RESUMED = ("resume", "out", "device", "no_progress")  # always this command's own


def resume_args(args, state, argv, arch, path):
    """--resume brings the run's settings back: the networks' (arch) always; when training goes on, also
    every other flag this command line does not give (e.g. it may give a larger --steps), so a resumed
    run trains exactly as it began. --eval-only and --predict take only arch (they may run elsewhere)."""
    names, given = sorted(vars(args)), set()
    for token in sys.argv[1:] if argv is None else argv:
        if token.startswith("--"):  # a flag, its alias, or (as argparse accepts) a unique prefix of one
            flag = token.split("=")[0]
            name = flag[2:].replace("-", "_")  # a parser of plain argparse: flags are their dests
            found = ({OPTION_DESTS[flag]} if flag in OPTION_DESTS else
                     {d for f, d in OPTION_DESTS.items() if f.startswith(flag) and d in names}
                     or {k for k in names if k == name} or {k for k in names if k.startswith(name)})
            given.update(found if len(found) == 1 else ())
    asked = {k: getattr(args, k) for k in arch if k in given}
    arch_from_checkpoint(args, state, arch, path)
    for k, v in asked.items():
        if v != getattr(args, k):
            log(f"note: --{k.replace('_', '-')} {v} is not used: the network of --resume {path} was built with "
                f"{getattr(args, k)} (its shape comes from the checkpoint)")
    if args.eval_only or args.predict:
        return
    for k, v in state["args"].items():
        if k in names and k not in given and k not in NOT_RESUMED and k not in arch:
            setattr(args, k, v)
    if state.get("step", 0) >= args.steps:
        log(f"note: --resume {path} has trained {state['step']} steps (>= --steps {args.steps}): nothing "
            f"is left to train; it is evaluated (give a larger --steps to train on)")


def checked_args(args, get_args, path):
    """The script's flag checks (get_args) once more on the settings --resume brought back: a damaged or
    edited checkpoint (hidden='big', camera='fisheye', ...) is one error, not a traceback or a silent default."""
    argv = []
    for k, v in vars(args).items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, (list, tuple)):  # nargs flags
            argv += [flag, *map(str, v)]
        elif v is not None and v is not False:
            argv.append(flag if v is True else f"{flag}={v}")
    try:
        unset = [k for k, v in vars(get_args([])).items() if v is not None and getattr(args, k, 0) is None]
        if unset:  # a flag cannot say None: the re-parse would take its default silently
            raise InputError(f"{', '.join(unset)} set to None")
        return get_args(argv)
    except InputError as e:
        raise InputError(f"--resume {path}: a damaged or edited checkpoint ({e})") from None


def load_weights(module, sd, path, name):
    """module.load_state_dict with a clear error when the checkpoint's tensors do not fit or are not finite."""
    try:
        module.load_state_dict(sd)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise InputError(f"--resume {path}: weights of {name} do not fit this network ({first})") from None
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # training never saves these (stop_if_diverged): a damaged or edited file
        raise InputError(f"--resume {path}: weights of {name} hold NaN or inf ({len(bad)} tensor(s), e.g. "
                         f"{bad[0]}); expected a checkpoint written by a run (damaged or edited file?)")


def restore_training(state, nets, opts, data_rng, path):
    """Continue exactly where a checkpoint stopped: weights, optimisers (at this run's --lr), all RNGs.
    Returns (step, wall_s, samples)."""
    for k, m in nets.items():
        load_weights(m, state["nets"][k], path, k)
    try:
        for k, o in opts.items():
            lrs = [g["lr"] for g in o.param_groups]  # this run's --lr (the checkpoint's unless given again)
            o.load_state_dict(state["opts"][k])
            for g, lr in zip(o.param_groups, lrs):
                g["lr"] = lr
            for p in (p for g in o.param_groups for p in g["params"]):  # torch checks no state shapes
                if any(torch.is_tensor(v) and v.dim() and v.shape != p.shape for v in o.state.get(p, {}).values()):
                    raise ValueError(f"{k}'s optimiser state does not match a parameter of shape {tuple(p.shape)}")
        data_rng.set_state(state["data_rng"])
        set_rng_state(state["rng"])
    except Exception as e:  # anything else a damaged or edited file can raise
        raise InputError(f"--resume {path}: optimiser or RNG state does not fit this run "
                         f"({type(e).__name__}: {str(e)[:120]})") from None
    return int(state["step"]), float(state["wall_s"]), int(state["samples"])


# ----------------------------------------------------------------------------------------------
# Data files: every reader names the file and the expected layout when it fails, and none
# unpickles (numpy arrays load with allow_pickle=False).
def natural_key(name):
    """Sort key for file and frame names: numbers in them compare as numbers (frame_2 before frame_10)."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", str(name)))]


def read_text(path, what):
    """A text file's contents; missing, unreadable or not UTF-8 is an InputError naming `what`."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark (Windows editors) is dropped
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (expected {what})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}; expected {what})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}; expected {what})") from None


def read_json(path, what):
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}; expected {what})") from None


def read_numbers(path, what, cols=None):
    """A whitespace-separated numeric table -> float64 (rows, cols); ragged or non-numeric rows,
    NaN/inf, or the wrong column count are an InputError."""
    rows = [ln.split() for ln in read_text(path, what).splitlines() if ln.strip() and not ln.startswith("#")]
    try:
        arr = np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError:
        raise InputError(f"{path}: non-numeric values or rows of unequal length (expected {what})") from None
    if arr.ndim != 2 or not len(arr) or (cols is not None and arr.shape[1] not in np.atleast_1d(cols)):
        raise InputError(f"{path}: found {arr.shape[1] if arr.ndim == 2 else 0} numbers per row in "
                         f"{len(rows)} rows; expected {what}")
    check_finite(arr, path, "values", what)
    return arr


def load_npz(path, required=(), what="an npz file", pickled=()):
    """np.load with allow_pickle=False (the keys in `pickled` may hold arrays of arrays, read by SafeUnpickler);
    a missing file or key is an InputError naming the layout."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected {what})")
    if not zipfile.is_zipfile(path):  # np.load would take it for a .npy or a pickle
        with open(path, "rb") as f:
            head = f.read(8)
        found = ("it is a single .npy array (np.save)" if head.startswith(b"\x93NUMPY") else "it is a pickle"
                 if head[:1] == b"\x80" else f"its first bytes are {head!r}")
        raise InputError(f"{path}: not an .npz archive (np.savez; {found}); expected {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {}
            for k in z.files:
                obj = read_pickled(path, k, what) if k in pickled else None    # None: a plain array
                data[k] = z[k] if obj is None else obj
    except InputError:
        raise
    except ValueError as e:
        raise InputError(f"{path}: holds pickled objects, which are not loaded for safety "
                         f"(expected {what}; {e})") from None
    except Exception as e:
        raise InputError(f"{path}: cannot be read as .npz (expected {what}; "
                         f"{type(e).__name__}: {e})") from None
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}; found {sorted(data)} (expected {what})")
    return data


class SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays (VideoPose3D's pickled npz entries, Monodepth2's arrays of
    depth maps) and refuses every other class: no code runs."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")} | {
        (f"numpy.{c}.multiarray", n) for c in ("core", "_core") for n in ("_reconstruct", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if hasattr(np, "_core"):  # numpy >= 2 reads numpy 1.x pickles
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def read_pickled(path, key, what):
    """An npz's `key` via SafeUnpickler: pickled objects (latin1: Python 2's array bytes, as numpy reads them),
    None for a plain numeric array."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
            fp = io.BytesIO(f.read())
        fmt = np.lib.format
        header = fmt.read_array_header_1_0 if fmt.read_magic(fp) == (1, 0) else fmt.read_array_header_2_0
        obj = SafeUnpickler(fp, encoding="latin1").load() if header(fp)[2].hasobject else None
    except (OSError, KeyError, zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise InputError(f"{path}: cannot read {what}: {e}") from None
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj


def as_numbers(value, path, key, what, dtype=np.float64):
    """A value read from a file as a numeric array; ragged lists or non-numbers are an InputError."""
    try:
        return np.asarray(value, dtype)
    except (ValueError, TypeError):
        raise InputError(f"{path}: {key} is not a rectangular array of numbers (lists of unequal length or "
                         f"non-numbers); expected {what}") from None


def load_npy(path, what):
    """np.load of one .npy array with allow_pickle=False, errors as InputError."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected {what})")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as a .npy array without pickles "
                         f"(expected {what}; {type(e).__name__})") from None


def check_array(arr, path, key, shape, what):
    """A numeric, finite array of shape pattern `shape` -> float32, else InputError. An entry of the
    pattern is a size, None (any size, shown as N) or a name (any size, shown by name, e.g. "H")."""
    arr = np.asarray(arr)
    ok = arr.dtype.kind in "fiub" and arr.ndim == len(shape) and all(
        s is None or isinstance(s, str) or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{path}: '{key}' has shape {arr.shape} and dtype {arr.dtype}; expected numbers "
                         f"of shape {want} ({what})")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, reported just below
        arr = arr.astype(np.float32)
    check_finite(arr, path, key, what)
    return arr


def check_finite(arr, path, key, what):
    bad = ~np.isfinite(np.asarray(arr, dtype=np.float64))
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise InputError(f"{path}: '{key}' holds {int(bad.sum())} NaN/inf value(s), first at index {first} "
                         f"(expected finite numbers: {what})")


# ----------------------------------------------------------------------------------------------
# Figures: images and GIFs through imageio (no plotting library).
def to_uint8(img):
    """An image as uint8 (H, W, 3): uint8 is kept as it is; floats are taken in [0, 1].
    Accepts (H, W), (H, W, 1|3) or (1|3, H, W), as numpy arrays or tensors."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu()
        img = img.numpy() if img.dtype == torch.uint8 else img.float().numpy()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(np.nan_to_num(img.astype(np.float64)), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


def image_grid(rows, pad=2, bg=255):
    """rows: list of lists of images of one size -> one uint8 (H, W, 3) image with padding."""
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


def cache_dir(name):
    """Folder for built-in datasets built on first use: $AIGN_CACHE/<name>, default ~/.cache/aign."""
    root = os.environ.get("AIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "aign")
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    return path


def tool_file(script_file, name):
    """tools/<name>.py beside the script (a copied script may not have it)."""
    return os.path.join(os.path.dirname(os.path.abspath(script_file)), "tools", name + ".py")


def load_tool(script_file, name, hint):
    """Import tools/<name>.py from beside the script (the repository's data builders and optional
    instruments, which a copied script may lack): the module, or one line ending in `hint`."""
    import importlib.util
    tool = tool_file(script_file, name)
    if not os.path.isfile(tool):
        raise InputError(f"{tool} is not here: {hint}")
    spec = importlib.util.spec_from_file_location(name, tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def optional_tool(script_file, name):
    """tools/<name>.py imported once per run (an optional instrument such as a script's figures), or None
    when it is not beside the script (a copied script runs without it)."""
    return load_tool(script_file, name, "") if os.path.isfile(tool_file(script_file, name)) else None


def builtin_path(script_file, name, builder):
    """$AIGN_CACHE/<name>/builtin-<first 12 hex of sha256 of tools/<builder>.py>: a changed builder
    builds a fresh dataset instead of reusing a stale one (None when the builder is not here)."""
    tool = tool_file(script_file, builder)
    if not os.path.isfile(tool):
        return None
    with open(tool, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return os.path.join(cache_dir(name), f"builtin-{digest}")


def builtin_dataset(script_file, name, builder, dist_state, **build_kwargs):
    """The cached built-in dataset folder of a script (builtin_path), built on first use by rank 0
    with build(folder, **build_kwargs) of tools/<builder>.py next to the script (built aside and
    renamed, so concurrent runs never see half a build). A copied script without tools/ gets one
    line saying how to get data."""
    path = builtin_path(script_file, name, builder)
    if dist_state.main and (path is None or not os.path.isdir(path)):
        module = load_tool(script_file, builder, f"no --data given, and the built-in dataset needs this "
                           f"builder: pass --data (layouts: python3 {os.path.basename(script_file)} --help, "
                           f"README) or run from a clone of the aign repository")
        tmp = _tmp(path)
        module.build(tmp, **build_kwargs)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    dist_state.barrier()
    return path
