"""The shared plumbing: CLI checks, run-folder lock, checkpoints, safe readers, image conversion."""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import common
from common import InputError


def parse(*argv):
    p = common.add_common_args(argparse.ArgumentParser(), steps=10, batch_size=4, lr=1e-3, eval_every=5)
    p.add_argument("--lambda-adv", type=float, default=0.01)
    p.add_argument("--paired-frac", type=float, default=0.0)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("argv, flag", [
    (["--steps", "-5"], "--steps"), (["--batch-size", "0"], "--batch-size"),
    (["--eval-every", "0"], "--eval-every"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"),
    (["--lambda-adv", "-1"], "--lambda-adv"), (["--lambda-adv", "inf"], "--lambda-adv"),
    (["--paired-frac", "1.5"], "--paired-frac"), (["--seed", "-1"], "--seed"), (["--seed", str(2**70)], r"2\^63"),
    (["--eval-only"], "--resume"), (["--predict", "x", "--eval-only", "--resume", "c"], "choose one")])
def test_check_args_refuses_bad_values(argv, flag):
    with pytest.raises(InputError, match=flag):
        common.check_args(parse(*argv))


def test_check_args_accepts_defaults_and_edges():
    common.check_args(parse())
    common.check_args(parse("--steps", "0", "--paired-frac", "1", "--lambda-adv", "0"))


class OneRank:
    main, world, rank = True, 1, 0

    def broadcast(self, x):
        return x

    def barrier(self):
        pass


def test_run_dir_refuses_a_file_and_a_second_run(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        common.make_run_dir(parse("--out", str(f)), "t", OneRank())
    out = tmp_path / "run"
    common.make_run_dir(parse("--out", str(out)), "t", OneRank())
    assert (out / "run.lock").exists() and (out / "args.json").exists()
    # a second process on the same folder is refused while this one holds the lock
    code = ("import sys, argparse; sys.path.insert(0, %r); import common;"
            "p = common.add_common_args(argparse.ArgumentParser(), steps=1, batch_size=1, lr=1, eval_every=1);"
            "common.run_main(lambda: common.make_run_dir(p.parse_args(['--out', %r]), 't', "
            "common.Dist('cpu')))" % (os.path.dirname(common.__file__), str(out)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and "another run" in proc.stderr, proc.stderr
    common.release_lock()
    assert not (out / "run.lock").exists()
    # a lock left by a process that is gone is taken over
    (out / "run.lock").write_text(f"{os.uname().nodename} 999999999")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "run.lock").exists()
    # an empty lock is a run writing it right now (held), unless it is older than 10 s (a crash's leftover)
    (out / "run.lock").write_text("")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and "another run" in proc.stderr, proc.stderr
    os.utime(out / "run.lock", (time.time() - 60, time.time() - 60))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_checkpoint_round_trip_and_refusals(tmp_path):
    net, gen = torch.nn.Linear(3, 2), torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(net.parameters())
    path = str(tmp_path / "ckpt.pt")
    common.save_checkpoint(path, script="demo", step=7, args=parse(), nets={"G": net}, opts={"G": opt},
                           data_rng=gen, wall_s=1.5, samples=28)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    state = common.load_checkpoint(path, "demo", nets=("G",))
    net2, gen2 = torch.nn.Linear(3, 2), torch.Generator()
    opt2 = torch.optim.Adam(net2.parameters())
    assert common.restore_training(state, {"G": net2}, {"G": opt2}, gen2, path) == (7, 1.5, 28)
    assert torch.equal(net.weight, net2.weight) and torch.equal(gen.get_state(), gen2.get_state())
    with pytest.raises(InputError, match="not a checkpoint of other.py"):
        common.load_checkpoint(path, "other")
    with pytest.raises(InputError, match="nets/D"):
        common.load_checkpoint(path, "demo", nets=("G", "D"))
    with pytest.raises(InputError, match="do not fit"):
        common.restore_training(state, {"G": torch.nn.Linear(4, 2)}, {"G": opt2}, gen2, path)
    nan = {**state["nets"]["G"], "bias": torch.tensor([0.0, float("nan")])}    # a damaged or edited file
    with pytest.raises(InputError, match="weights of G hold NaN or inf .*bias"):
        common.load_weights(net2, nan, path, "G")
    torch.save({**state, "args": ["--lr", "1"]}, path)
    with pytest.raises(InputError, match=r"incomplete checkpoint of demo.py \(args is list, not a dict\)"):
        common.load_checkpoint(path, "demo")
    torch.save({**state, "step": "7"}, path)
    with pytest.raises(InputError, match="damaged checkpoint of demo.py .*step is str"):
        common.load_checkpoint(path, "demo")
    torch.save({"step": 1}, path)
    with pytest.raises(InputError, match="not a checkpoint"):
        common.load_checkpoint(path, "demo")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        common.load_checkpoint(str(tmp_path / "junk.pt"), "demo")
    with pytest.raises(InputError, match="no such file"):
        common.load_checkpoint(str(tmp_path / "none.pt"), "demo")


def test_readers_turn_failures_into_input_errors(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 1 2\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        common.read_text(str(latin), "a table")
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')                    # as Windows editors save it
    assert common.read_json(str(bom), "a table") == {"a": 1}
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("1 2 3\n4 5\n")
    with pytest.raises(InputError, match="unequal length"):
        common.read_numbers(str(ragged), "3 numbers per row")
    nan = tmp_path / "nan.txt"
    nan.write_text("1 nan 3\n")
    with pytest.raises(InputError, match="NaN"):
        common.read_numbers(str(nan), "3 numbers per row")
    ok = tmp_path / "ok.txt"
    ok.write_text("# a comment\n1 2 3\n4 5 6\n")
    assert common.read_numbers(str(ok), "3 numbers per row", cols=3).shape == (2, 3)
    with pytest.raises(InputError, match="expected 12 numbers"):
        common.read_numbers(str(ok), "12 numbers per row", cols=12)
    bad_json = tmp_path / "b.json"
    bad_json.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        common.read_json(str(bad_json), "a dict")
    for name, write, needle in (("a.npy", lambda p: np.save(p, np.zeros(3)), "single .npy array"),
                                ("b.npz", lambda p: p.write_text("frame,x,y\n"), "its first bytes are b'frame,x,'")):
        write(tmp_path / name)
        with pytest.raises(InputError, match=f"not an .npz archive .*{needle}.*; expected poses"):
            common.load_npz(str(tmp_path / name), (), "poses")
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="without pickles"):
        common.load_npy(str(obj), "an array")
    with pytest.raises(InputError, match="NaN/inf"):
        common.check_array(np.array([[1.0, np.inf]]), "f.npz", "x", (None, 2), "pairs")
    with pytest.raises(InputError, match=r"expected numbers of shape \(N, H, W\)"):
        common.check_array(np.zeros((2, 2)), "f.npz", "depth", (None, "H", "W"), "depth maps")
    with pytest.raises(InputError, match=r"expected numbers of shape \(N, 3\)"):
        common.check_array(np.zeros((2, 2)), "f.npz", "x", (None, 3), "triples")


def test_to_uint8_keeps_uint8_and_scales_floats():
    u8 = torch.tensor([0, 128, 255, 7], dtype=torch.uint8).view(1, 1, 4).expand(3, 2, 4)  # (3, 2, 4) CHW
    out = common.to_uint8(u8)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3) and out[1, :, 0].tolist() == [0, 128, 255, 7]
    f = np.array([[0.0, 0.5, 1.0, 2.0]])
    assert common.to_uint8(f)[0, :, 0].tolist() == [0, 128, 255, 255]


def test_a_bad_input_leaves_no_empty_run_folder(tmp_path):
    """A run stopped by a bad input right after creating its folder removes that folder again."""
    out = tmp_path / "runs" / "new"
    code = ("import sys, argparse; sys.path.insert(0, %r); import common\n"
            "p = common.add_common_args(argparse.ArgumentParser(), steps=1, batch_size=1, lr=1, eval_every=1)\n"
            "def main():\n"
            "    common.make_run_dir(p.parse_args(['--out', %r]), 't', common.Dist('cpu'))\n"
            "    raise common.InputError('--data x: no such file')\n"
            "common.run_main(main)" % (os.path.dirname(common.__file__), str(out)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --data x: no such file", proc.stderr
    assert not out.exists() and not out.parent.exists()


def test_cpu_threads_keep_the_default_when_idle_and_yield_to_busy_cpus():
    assert common.cpu_threads(2, 2, 0) == 2  # idle: torch's default (results unchanged)
    assert common.cpu_threads(2, 2, 1) == 1 and common.cpu_threads(8, 8, 3) == 5
    assert common.cpu_threads(2, 2, 5) == 1 and common.cpu_threads(1, 8, 0) == 1


def test_dist_yields_a_thread_to_a_busy_neighbour_unless_omp_num_threads_is_set():
    code = ("import sys, torch; sys.path.insert(0, %r); import common; n = torch.get_num_threads(); "
            "common.Dist('cpu'); print(n, torch.get_num_threads(), common.busy_cpus())"
            % os.path.dirname(common.__file__))
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        before, after, busy = map(int, subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                                      capture_output=True, text=True).stdout.split()[-3:])
        kept = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_NUM_THREADS": "3"}, check=True,
                              capture_output=True, text=True).stdout.split()[-3:]
    finally:
        spin.kill()
        spin.wait()
    assert busy >= 1 and after == max(1, min(before, len(os.sched_getaffinity(0)) - busy))
    assert kept[0] == kept[1]  # OMP_NUM_THREADS given: torch's count from it is kept


def test_builtin_dataset_is_rebuilt_when_its_builder_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tools").mkdir()
    script, builder = str(tmp_path / "task_aign.py"), tmp_path / "tools" / "task_builtin.py"
    once = type("D", (), {"main": True, "barrier": lambda self: None})()
    builder.write_text("import os\ndef build(folder):\n    os.makedirs(folder)\n    open(os.path.join(folder, 'v'), 'w').write('1')\n")
    first = common.builtin_dataset(script, "task", "task_builtin", once)
    assert open(os.path.join(first, "v")).read() == "1"
    assert common.builtin_dataset(script, "task", "task_builtin", once) == first  # cached
    builder.write_text(builder.read_text().replace("'1'", "'2'"))
    second = common.builtin_dataset(script, "task", "task_builtin", once)
    assert second != first and open(os.path.join(second, "v")).read() == "2"
    builder.unlink()
    with pytest.raises(InputError, match="task_builtin.py is not here"):
        common.builtin_dataset(script, "task", "task_builtin", once)


def test_a_diverged_loss_is_one_clear_error():
    dist_state = common.Dist("cpu")
    common.stop_if_diverged({"loss_g": 0.5, "loss_d": 1.3}, 10, dist_state)  # finite: nothing happens
    with pytest.raises(InputError, match=r"training diverged by step 10: loss_g became NaN/inf"):
        common.stop_if_diverged({"loss_g": float("nan"), "loss_d": 1.3}, 10, dist_state)
    with pytest.raises(InputError, match="loss_d"):
        common.stop_if_diverged({"loss_g": 0.5, "loss_d": float("inf")}, 10, dist_state)
    net = torch.nn.Linear(2, 2)
    common.stop_if_diverged({}, 3, dist_state, {"G": net})
    with torch.no_grad():
        net.weight[0, 1] = float("nan")
    with pytest.raises(InputError, match="by step 3: G's weights became NaN/inf"):
        common.stop_if_diverged({"loss_g": 0.5}, 3, dist_state, {"G": net})


def test_argument_errors_are_input_errors():
    p = common.ArgumentParser()
    p.add_argument("--steps", type=int)
    for argv, needle in ((["--steps", "x"], "argument --steps: invalid int value: 'x'"),
                         (["--nope"], "unrecognized arguments: --nope")):
        with pytest.raises(InputError, match=needle):
            p.parse_args(argv)


def test_checked_args_reparses_what_a_checkpoint_brought_back():
    def get_args(argv):
        p = common.ArgumentParser()
        p.add_argument("--hidden", type=int, default=8)
        p.add_argument("--range", type=float, nargs=2)
        p.add_argument("--fast", action="store_true")
        return p.parse_args(argv)
    args = get_args(["--range", "-10", "40", "--fast"])
    assert vars(common.checked_args(args, get_args, "c.pt")) == vars(args)
    args.hidden = "big"
    with pytest.raises(InputError, match=r"--resume c.pt: a damaged or edited checkpoint \(argument --hidden"):
        common.checked_args(args, get_args, "c.pt")
    args.hidden = None  # no flag says None: it would come back as the default
    with pytest.raises(InputError, match=r"checkpoint \(hidden set to None\)"):
        common.checked_args(args, get_args, "c.pt")


def test_the_error_line_is_not_glued_to_an_open_progress_bar(capsys):
    from tqdm import tqdm

    def main():
        bar = tqdm(range(10), desc="reading faces")
        next(iter(bar))
        raise InputError("x.png: cannot be read")
    with pytest.raises(SystemExit):
        common.run_main(main)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert lines[-1] == "error: x.png: cannot be read"


def test_resume_brings_back_every_setting_the_command_line_does_not_give(capsys):
    p = common.add_common_args(argparse.ArgumentParser(), steps=10, batch_size=4, lr=1e-3, eval_every=5)
    p.add_argument("--lambda-adv", type=float, default=0.1)
    p.add_argument("--task", default="sr")
    trained = vars(p.parse_args(["--task", "inpaint", "--lambda-adv", "0.5", "--lr", "2e-4", "--out", "a"]))
    state = {"args": trained}
    argv = ["--resume", "a/ckpt.pt", "--steps", "20", "--lambda-a=0.7"]  # a unique prefix counts as given
    args = p.parse_args(argv)
    common.resume_args(args, state, argv, ("task",), "a/ckpt.pt")
    assert (args.task, args.lr, args.steps, args.lambda_adv) == ("inpaint", 2e-4, 20, 0.7)
    assert args.resume == "a/ckpt.pt" and args.out is None  # this command's own
    state["step"] = 30
    common.resume_args(args, state, argv, ("task",), "a/ckpt.pt")  # already past --steps 20: say so
    assert "has trained 30 steps (>= --steps 20): nothing is left to train" in capsys.readouterr().out
    argv = ["--resume", "a/ckpt.pt", "--task", "sr"]  # the networks' shape is the checkpoint's: say so
    args = p.parse_args(argv)
    common.resume_args(args, state, argv, ("task",), "a/ckpt.pt")
    assert args.task == "inpaint" and "--task sr is not used" in capsys.readouterr().out
    argv = ["--resume", "a/ckpt.pt", "--eval-only"]  # evaluation elsewhere: only the networks' settings
    args = p.parse_args(argv)
    common.resume_args(args, state, argv, ("task",), "a/ckpt.pt")
    assert (args.task, args.lr, args.lambda_adv) == ("inpaint", 1e-3, 0.1)


def test_resume_knows_a_flag_by_its_alias_and_applies_a_new_lr():
    """--lr-d (dest d_lr) given again is kept over the checkpoint's value; a --lr given again is the optimiser's
    learning rate after the restore (the optimiser state would bring the old one back)."""
    p = common.ArgumentParser()
    common.add_common_args(p, steps=10, batch_size=4, lr=1e-3, eval_every=5)
    p.add_argument("--lr-d", "--d-lr", dest="d_lr", type=float, default=None)
    state = {"args": vars(p.parse_args(["--lr-d", "0.001", "--lr", "2e-4"]))}
    for argv in (["--resume", "x.pt", "--lr-d", "0.123"], ["--resume", "x.pt", "--d-lr=0.123"]):
        args = p.parse_args(argv)
        common.resume_args(args, state, argv, (), "x.pt")
        assert (args.d_lr, args.lr) == (0.123, 2e-4)
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.ones(1, 2)).sum().backward()
    opt.step()
    ckpt = {"nets": {"m": m.state_dict()}, "opts": {"m": opt.state_dict()}, "rng": common.rng_state(),
            "data_rng": torch.Generator().get_state(), "step": 1, "wall_s": 1.0, "samples": 4}
    new = torch.optim.Adam(m.parameters(), lr=0.5)
    assert common.restore_training(ckpt, {"m": m}, {"m": new}, torch.Generator(), "x.pt") == (1, 1.0, 4)
    assert new.param_groups[0]["lr"] == 0.5 and new.state_dict()["state"][0]["step"] == 1
    bad = {**ckpt, "opts": {"m": {**opt.state_dict(), "state": {0: {**opt.state_dict()["state"][0],
                                                                    "exp_avg": torch.zeros(3)}}}}}
    for damaged in (bad, {**ckpt, "rng": {**ckpt["rng"], "python": "(3, (1,2"}}, {**ckpt, "opts": {"m": "hello"}}):
        with pytest.raises(InputError, match="x.pt: optimiser or RNG state does not fit this run"):
            common.restore_training(damaged, {"m": m}, {"m": torch.optim.Adam(m.parameters())}, torch.Generator(), "x.pt")
