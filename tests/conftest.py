"""Shared test plumbing: run a script through its command line, as a user would."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_cli(script, *args, timeout=300, check=True, env=None, torchrun_nproc=None, cwd=ROOT):
    """Run `python script args...` (or torchrun) in `cwd` (default: the repo root); returns
    CompletedProcess. With check=True a non-zero exit fails the test and shows the script's output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    if torchrun_nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun_nproc}", script, *map(str, args)]
    else:
        cmd = [sys.executable, script, *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                    f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """One AIGN_CACHE for the whole session, so built-in datasets are built once."""
    path = tmp_path_factory.mktemp("aign_cache")
    os.environ["AIGN_CACHE"] = str(path)
    return path


def standalone_copy(script, folder):
    """Copy `script` and common.py, and nothing else, into an empty folder (as a user copying the
    reference implementation would); returns the folder, to pass as run_cli(..., cwd=folder)."""
    os.makedirs(folder, exist_ok=True)
    assert not os.listdir(folder), f"{folder} is not empty"
    for name in (script, "common.py"):
        shutil.copy(os.path.join(ROOT, name), os.path.join(folder, name))
    return str(folder)


def one_line_error(proc, *needles):
    """A bad input's contract: exit status 2, no traceback, one 'error: ...' line naming what is wrong."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err[-3000:]
    for n in needles:
        assert n.lower() in last.lower(), f"{n!r} not in {last!r}"
    return last
