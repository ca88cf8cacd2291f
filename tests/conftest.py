"""Shared test plumbing: run a script through its command line, as a user would."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_cli(script, *args, timeout=300, check=True, env=None, torchrun_nproc=None):
    """Run `python script args...` (or torchrun) from the repo root; returns CompletedProcess.
    With check=True a non-zero exit fails the test and shows the script's output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    if torchrun_nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={torchrun_nproc}", script, *map(str, args)]
    else:
        cmd = [sys.executable, script, *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
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
