"""face_aign.py: renderers, loaders, metrics, CLI (train, resume, eval-only, predict, torchrun), learning.
Runs without the optional face packages: the data are tiny procedural CelebA-layout fixtures."""
import glob
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import common
from conftest import ROOT, one_line_error, run_cli, standalone_copy
import face_aign as fa
from common import InputError

SMALL = ["--size", "32", "--channels", "8", "--blocks", "1", "--batch-size", "4", "--test-size", "8",
         "--judge-steps", "5", "--no-progress"]


# ----------------------------------------------------------------------------------------------
# Fixtures: procedural faces in the CelebA layout (178x218 JPEGs) and plain folders.
def draw_face(rng, male, big_lips, h=218, w=178):
    """A crude aligned face: background, skin ellipse, hair (short if male), eyes, mouth."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = rng.uniform(0, 255, 3)
    cy, cx = h * 0.55 + rng.normal(0, 3), w / 2 + rng.normal(0, 3)
    hair = rng.uniform(0, 120, 3)
    if not male:  # long hair behind the face
        img[((yy - cy) / 95) ** 2 + ((xx - cx) / 75) ** 2 < 1] = hair
    img[((yy - cy) / 75) ** 2 + ((xx - cx) / 55) ** 2 < 1] = rng.uniform([150, 100, 80], [255, 200, 170])
    img[(((yy - cy + 70) / 25) ** 2 + ((xx - cx) / 55) ** 2 < 1)] = hair
    for ex in (-20, 20):
        img[((yy - cy + 15) / 5) ** 2 + ((xx - cx - ex) / 8) ** 2 < 1] = 30
    img[((yy - cy - 38) / (9 if big_lips else 4)) ** 2 + ((xx - cx) / 18) ** 2 < 1] = [180, 40, 60]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_celeba(root, n=60, seed=0, partition=True):
    import imageio.v3 as iio
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "img_align_celeba"), exist_ok=True)
    rows = []
    for i in range(n):
        male, young, lips = i % 2 == 0, i % 3 != 0, i % 4 == 1
        name = f"{i + 1:06d}.jpg"
        iio.imwrite(os.path.join(root, "img_align_celeba", name), draw_face(rng, male, lips), quality=95)
        rows.append(f"{name} " + " ".join("1" if v else "-1" for v in (male, young, lips)))
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
        f.write(f"{n}\nMale Young Big_Lips\n" + "\n".join(rows) + "\n")
    if partition:
        with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
            f.write("".join(f"{i + 1:06d}.jpg {2 if i >= n - n // 4 else 0}\n" for i in range(n)))
    return str(root)


def make_folder(root, n, seed=1, size=48):
    import imageio.v3 as iio
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        iio.imwrite(os.path.join(root, f"face{i}.png"), draw_face(rng, i % 2 == 0, False, size, size))
    return str(root)


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    return make_celeba(tmp_path_factory.mktemp("celeba"))


@pytest.fixture(scope="module")
def sr_run(celeba, tmp_path_factory):
    """One small sr training run shared by the checks that need a checkpoint (wgan-gp: the loss that
    draws from the global RNG, so the resume check below also covers the judge-before-restore order)."""
    out = tmp_path_factory.mktemp("sr_run")
    run_cli("face_aign.py", "--data", celeba, "--out", out, "--steps", 4, "--eval-every", 2, "--gan", "wgan-gp",
            "--d-norm", "spectral", *SMALL)
    return out


# ----------------------------------------------------------------------------------------------
# Renderers against naive loops; gradcheck.
@pytest.mark.parametrize("k", [2, 4])
def test_render_sr_matches_naive_loop(k):
    y = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ref = torch.zeros(2, 3, 8 // k, 8 // k, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            for i in range(8 // k):
                for j in range(8 // k):
                    ref[b, c, i, j] = sum(y[b, c, i * k + u, j * k + v] for u in range(k) for v in range(k)) / k**2
    assert torch.allclose(fa.render_sr(y, k), ref)


def test_masks_and_masking_renderer():
    size, shifts = 32, torch.tensor([[0, 0], [2, -1]])
    m = fa.box_masks(2, size, "mouth", shifts)
    y0, y1, x0, x1 = (round(f * size) for f in fa.BOXES["mouth"])
    for b, (dy, dx) in enumerate(shifts.tolist()):
        ref = torch.ones(size, size)
        for i in range(size):
            for j in range(size):
                if y0 + dy <= i < y1 + dy and x0 + dx <= j < x1 + dx:
                    ref[i, j] = 0
        assert torch.equal(m[b, 0], ref)
    y = torch.rand(2, 3, size, size)
    assert torch.equal(fa.render_inpaint(y, m), y * m)
    # the composite prediction keeps every visible pixel of the input
    G = fa.InpaintGenerator(8, 1)
    x = fa.render_inpaint(y, m)
    with torch.no_grad():
        out = fa.generate(G, fa.get_args(["--task", "inpaint", "--size", "32"]), x, m)
    assert torch.allclose(out * m, x)


def test_renderers_gradcheck():
    y = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fa.render_sr(t, 4), (y,))
    m = fa.box_masks(1, 8, "nose", torch.zeros(1, 2, dtype=torch.long)).double()
    assert torch.autograd.gradcheck(lambda t: fa.render_inpaint(t, m), (y,))


def test_sr_generator_starts_at_bicubic():
    G = fa.SRGenerator(4, 8, 1)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.allclose(G(x), fa.bicubic(x, 4))


# ----------------------------------------------------------------------------------------------
# Metrics on hand-computed cases.
def test_psnr_hand_computed():
    a = torch.zeros(1, 3, 4, 4)
    assert fa.psnr(a, a + 0.1).item() == pytest.approx(20.0)  # mse 0.01 on a peak of 1
    assert fa.psnr(a, a + 0.5).item() == pytest.approx(10 * np.log10(4))
    assert fa.psnr(a, a).item() == pytest.approx(100.0)


def test_ssim_hand_computed():
    a = torch.rand(2, 3, 16, 16)
    assert torch.allclose(fa.ssim(a, a), torch.ones(2, dtype=torch.float64))
    c1, c2 = 0.2, 0.6  # constant images: only the luminance term is left
    ref = (2 * c1 * c2 + 0.01**2) / (c1**2 + c2**2 + 0.01**2)
    s = fa.ssim(torch.full((1, 3, 16, 16), c1), torch.full((1, 3, 16, 16), c2))
    assert s.item() == pytest.approx(ref, rel=1e-6)
    assert fa.ssim(a, 1 - a).mean() < 0.5


# ----------------------------------------------------------------------------------------------
# Loaders: CelebA layout, plain folders, bad inputs.
def face_key(t):
    return t.numpy().tobytes()


def test_celeba_loader_splits(celeba):
    args = fa.get_args(["--data", celeba, "--bias", "-Male", "--size", "32", "--batch-size", "2",
                        "--test-size", "8"])
    data = fa.load_faces(args, celeba, show=False)
    # identify every face by its pixels to check the splits
    names, _, attrs = fa.read_rows(os.path.join(celeba, "list_attr_celeba.txt"), ("1", "-1"), attrs=True)
    all_faces = fa.load_images([os.path.join(celeba, "img_align_celeba", f"{i + 1:06d}.jpg") for i in range(60)],
                               32, "x", False)
    male = {face_key(f): attrs[i, 0] == "1" for i, f in enumerate(all_faces)}
    inputs = {face_key(f) for f in data["inputs"]}
    mem = {face_key(f) for f in data["mem"]}
    test = {face_key(f) for f in data["test"]}
    val = {face_key(f) for f in data["val"]}
    judge = {face_key(f) for f in data["judge_data"][0]}
    roles = [inputs, mem, test, val, judge]
    assert all(roles) and all(not (a & b) for i, a in enumerate(roles) for b in roles[i + 1:])  # disjoint roles
    assert mem and not any(male[k] for k in mem)  # a female-only memory
    assert len(val) == 4 and len(data["val_labels"]) == 4  # no partition 1: 10% of the training faces
    assert torch.equal(data["judge_data"][1], torch.tensor([not male[face_key(f)] for f in data["judge_data"][0]]))
    assert any(male[k] for k in inputs) and not all(male[k] for k in inputs)  # inputs of every kind
    assert len(test) == 8 and data["test_labels"].sum().item() == 4  # balanced on -Male
    assert data["inputs"].shape[1:] == (3, 32, 32) and data["inputs"].dtype == torch.uint8


def test_plain_folder_with_memory(tmp_path):
    data_dir, mem_dir = make_folder(tmp_path / "faces", 20), make_folder(tmp_path / "person", 6, seed=5)
    args = fa.get_args(["--data", data_dir, "--memory", mem_dir, "--size", "32", "--batch-size", "4"])
    data = fa.load_faces(args, data_dir, show=False)
    assert len(data["mem"]) == 6 and len(data["test"]) == 2 and len(data["val"]) == 1 and len(data["inputs"]) == 17
    assert data["judge_data"] is None and data["test_labels"] is None


def test_images_smaller_than_size_are_upscaled_with_a_note(tmp_path, capsys):
    small = make_folder(tmp_path / "small", 20, size=48)  # 48x48 faces, --size 64: upscaled
    data = fa.load_faces(fa.get_args(["--data", small, "--size", "64", "--batch-size", "4"]), small, show=False)
    assert data["inputs"].shape[1:] == (3, 64, 64)
    assert re.search(r"note: 20 of 20 images \(faces\) are smaller than --size 64 \(e.g. .*: 48x48\); they "
                     r"are upscaled", capsys.readouterr().out)
    fa.load_faces(fa.get_args(["--data", small, "--size", "32", "--batch-size", "4"]), small, show=False)
    assert "note" not in capsys.readouterr().out  # shrunk: no note


def bad(argv, match):
    try:
        with pytest.raises(InputError, match=match):
            fa.main(argv)
    finally:
        common.release_lock()  # in-process main(): the run folder's lock is released by run_main otherwise


def test_bad_inputs(tmp_path, celeba, cache_root):
    import imageio.v3 as iio
    out = ["--out", str(tmp_path / "run"), *SMALL]
    (tmp_path / "empty").mkdir()
    bad(["--data", str(tmp_path / "empty"), *out], "no images found")
    bad(["--data", str(tmp_path / "missing"), *out], "no such folder")
    (tmp_path / "root" / "img_align_celeba").mkdir(parents=True)                 # the CelebA root, given as faces
    with pytest.raises(InputError, match=r"no images found .*they may be in .*root/img_align_celeba"):
        fa.list_images(str(tmp_path / "root"))
    with pytest.raises(InputError, match=r"000009.jpg: no such file \(expected an RGB"):
        fa.read_rgb(str(tmp_path / "root" / "img_align_celeba" / "000009.jpg"))
    d = make_folder(tmp_path / "broken", 3)
    (tmp_path / "broken" / "zz.jpg").write_bytes(b"not an image")
    bad(["--data", d, *out], "zz.jpg: cannot be read as an image")
    d = make_folder(tmp_path / "gray", 3)
    grey = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    iio.imwrite(tmp_path / "gray" / "g.png", grey)                     # grey and RGBA faces load as RGB
    iio.imwrite(tmp_path / "gray" / "a.png", np.dstack([grey, grey, grey, np.full_like(grey, 128)]))
    for f in ("g.png", "a.png"):
        assert np.array_equal(fa.read_rgb(str(tmp_path / "gray" / f)), np.dstack([grey] * 3))
    iio.imwrite(tmp_path / "gray" / "g16.png", grey.astype(np.uint16) * 256)
    bad(["--data", d, *out], r"g16.png: expected an 8-bit grey, RGB or RGBA image, found uint16")
    bad(["--data", celeba, "--bias", "Beard", *out], "'Beard': not in .* Male, Young, Big_Lips")
    small = make_folder(tmp_path / "small", 2)
    bad(["--data", celeba, "--memory", small, *out], "memory: 2 faces .* at least one batch")
    bad(["--data", celeba, *out, "--size", "48"], "--size 48")
    with open(tmp_path / "attr.txt", "w") as f:
        f.write("2\nMale\n000001.jpg 1\n000002.jpg 0\n")
    with pytest.raises(InputError, match=r"attr.txt:4: expected .* v in \{1, -1\}"):
        fa.read_rows(str(tmp_path / "attr.txt"), ("1", "-1"), attrs=True)
    with pytest.raises(InputError, match="requirements-faces.txt"):
        load_tool("face_builtin").package_file("no-such-face-package", "no_such_face_package", "weights.tar")


def test_bad_input_cli_exit_code(tmp_path):
    (tmp_path / "empty").mkdir()
    p = run_cli("face_aign.py", "--data", tmp_path / "empty", "--out", tmp_path / "run", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error:") and "no images found" in p.stderr


# ----------------------------------------------------------------------------------------------
# The command line: train, resume, eval-only, predict, inpaint, torchrun.
def test_sr_train_outputs(sr_run):
    res = json.load(open(sr_run / "results.json"))
    for k in ("psnr_hr", "ssim_hr", "psnr_lr", "psnr_hr_bicubic", "ssim_hr_bicubic", "psnr_lr_bicubic",
              "attr_rate", "attr_rate_cnn", "attr_rate_bicubic", "attr_rate_cnn_bicubic", "attr_rate_gt",
              "judge_acc_cnn", "d_acc_mem", "d_acc_out", "steps", "wall_s", "images_per_s"):
        assert k in res, k
    assert res["steps"] == 4 and res["judge"] == "cnn" and res["n_val"] == 4 and res["n_test"] == 8
    assert res["attr_rate"] == res["attr_rate_cnn"] and 0 <= res["judge_acc_cnn"] <= 1
    lines = [json.loads(ln) for ln in open(sr_run / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [2, 4] and "loss_sup" in lines[-1]
    # training is validated on the validation faces only, with D's accuracy on memory vs outputs
    assert "val_psnr_hr" in lines[-1] and "val_d_acc_mem" in lines[-1] and "val_d_acc_out" in lines[-1]
    assert not any(k.startswith("test_") for r in lines for k in r)
    ck = torch.load(sr_run / "ckpt.pt", weights_only=True)
    assert set(common.CKPT_KEYS) <= set(ck) and ck["script"] == "face_aign"
    for f in ("ckpt.pt", "samples.png", "samples_000004.png", "samples.npz", "args.json", "versions.json",
              "command.txt"):
        assert (sr_run / f).exists(), f


def test_resume_is_exact(celeba, sr_run, tmp_path):
    out = tmp_path / "resumed"
    run_cli("face_aign.py", "--data", celeba, "--out", out, "--steps", 2, "--eval-every", 2, "--gan", "wgan-gp",
            "--d-norm", "spectral", *SMALL)  # spectral norm's power-iteration vectors resume too
    (out / "metrics.jsonl").write_text("")  # as if killed while validating after its checkpoint: logged on resume
    run_cli("face_aign.py", "--data", celeba, "--resume", out / "ckpt.pt", "--steps", 4, "--eval-every", 2, *SMALL)
    a = torch.load(sr_run / "ckpt.pt", weights_only=True)
    b = torch.load(out / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and b["args"]["gan"] == "wgan-gp" and b["args"]["d_norm"] == "spectral"
    for net in ("G", "D"):
        for k in a["nets"][net]:
            assert torch.equal(a["nets"][net][k], b["nets"][net][k]), (net, k)
    ra, rb = json.load(open(sr_run / "results.json")), json.load(open(out / "results.json"))
    assert ra["psnr_hr"] == rb["psnr_hr"] and ra["attr_rate"] == rb["attr_rate"]
    assert [json.loads(ln)["step"] for ln in open(out / "metrics.jsonl")] == [2, 4]


def test_eval_only_and_predict(celeba, sr_run, tmp_path):
    out = tmp_path / "eval"
    run_cli("face_aign.py", "--data", celeba, "--resume", sr_run / "ckpt.pt", "--eval-only", "--out", out,
            "--no-progress", "--test-size", "8", "--judge-steps", "5")
    ev = json.load(open(out / "results.json"))
    res = json.load(open(sr_run / "results.json"))
    assert ev["psnr_hr"] == pytest.approx(res["psnr_hr"]) and ev["step"] == 4 and ev["eval_only"]
    assert ev["attr_rate"] == res["attr_rate"]  # the same CNN judge: trained once, kept in $AIGN_CACHE
    lr = make_folder(tmp_path / "lr", 2, size=8)  # matches the model's 32/4 input
    make_folder(tmp_path / "lr_big", 1, size=20)  # resized to the input size
    run_cli("face_aign.py", "--predict", lr, "--resume", sr_run / "ckpt.pt", "--out", tmp_path / "pred")
    run_cli("face_aign.py", "--predict", tmp_path / "lr_big", "--resume", sr_run / "ckpt.pt",
            "--out", tmp_path / "pred")
    import imageio.v3 as iio
    assert sorted(f for f in os.listdir(tmp_path / "pred") if f.endswith(".png")) == ["face0.png", "face1.png"]
    assert iio.imread(tmp_path / "pred" / "face0.png").shape == (32, 32, 3)
    # the PNGs are the model's outputs for those inputs (they were blank white before common.to_uint8's fix)
    state = torch.load(sr_run / "ckpt.pt", weights_only=True)
    G = fa.build_nets(fa.get_args(["--size", "32", "--channels", "8", "--blocks", "1"]), torch.device("cpu"))["G"]
    G.load_state_dict(state["nets"]["G_ema"])  # predictions come from the averaged generator
    G.eval()
    run_cli("face_aign.py", "--predict", lr, "--resume", sr_run / "ckpt.pt", "--out", tmp_path / "pred2")
    for name in ("face0", "face1"):
        with torch.no_grad():
            y = G(fa.to_float(fa.to_square(fa.read_rgb(os.path.join(lr, name + ".png")), 8)[None]))
        png = torch.from_numpy(iio.imread(tmp_path / "pred2" / f"{name}.png")).permute(2, 0, 1)[None]
        assert fa.psnr(png / 255.0, (y.clamp(-1, 1) + 1) / 2).item() > 40


def test_inpaint_train_and_predict(celeba, tmp_path):
    out = tmp_path / "inp"
    run_cli("face_aign.py", "--task", "inpaint", "--region", "nose", "--bias", "Big_Lips", "--data", celeba,
            "--out", out, "--steps", 2, "--eval-every", 2, "--gan", "lsgan", *SMALL, "--batch-size", "2")
    res = json.load(open(out / "results.json"))
    assert res["baseline"] == "fill" and "psnr_hr_fill" in res and res["judge_attr"] == "Big_Lips"
    assert "psnr_lr" not in res and "psnr_lr_fill" not in res  # P(y) = x by construction: not a metric
    faces = make_folder(tmp_path / "faces", 1, size=40)
    run_cli("face_aign.py", "--predict", faces, "--resume", out / "ckpt.pt", "--out", tmp_path / "pred")
    assert os.path.exists(tmp_path / "pred" / "face0.png")


def test_defaults_per_task_and_ema_zero_is_g_itself():
    # chosen on the validation faces: sr 400 steps and G averaged over ~100 steps (--ema 0.99), inpainting
    # 800 steps and over ~10 steps (--ema 0.9); an explicit flag always wins; --ema 0 evaluates G itself
    assert [fa.get_args(a).steps for a in ([], ["--task", "inpaint"], ["--task", "inpaint", "--steps", "0"],
                                           ["--steps", "7"])] == [400, 800, 0, 7]
    assert [fa.get_args(a).ema for a in ([], ["--task", "inpaint"], ["--task", "inpaint", "--ema", "0.5"],
                                         ["--ema", "0"])] == [0.99, 0.9, 0.5, 0.0]
    G = fa.InpaintGenerator(8, 1)
    G_ema = fa.build_nets(fa.get_args(["--task", "inpaint", "--channels", "8", "--blocks", "1"]), "cpu")["G_ema"]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p))
        G(torch.randn(2, 3, 32, 32), torch.ones(2, 1, 32, 32))  # training mode: BatchNorm statistics move
    fa.ema_update(G_ema, G, 0.0)  # decay 0: the evaluated generator is G, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(G_ema.state_dict().values(), G.state_dict().values()))
    fa.ema_update(G_ema, fa.InpaintGenerator(8, 1), 0.99)  # a decay > 0 keeps most of the old weights
    assert not torch.equal(G_ema.net[0].weight, G.net[0].weight)


def test_torchrun_two_processes(celeba, tmp_path):
    out = tmp_path / "ddp"
    run_cli("face_aign.py", "--data", celeba, "--out", out, "--steps", 2, "--eval-every", 2, *SMALL,
            torchrun_nproc=2, timeout=300)
    res = json.load(open(out / "results.json"))
    assert res["world"] == 2 and res["steps"] == 2


# ----------------------------------------------------------------------------------------------
# Learning: the renderer's signal alone makes outputs explain their inputs better than bicubic does.
def test_learning_raises_lr_consistency(celeba, tmp_path):
    out = tmp_path / "learn"
    run_cli("face_aign.py", "--data", celeba, "--out", out, "--steps", 60, "--eval-every", 60, "--lr", "1e-3",
            "--lambda-adv", 0, "--judge", "none", "--ema", 0, *SMALL)
    res = json.load(open(out / "results.json"))
    assert res["psnr_lr"] > res["psnr_lr_bicubic"] + 1.0, res


# ----------------------------------------------------------------------------------------------
# Optional packages (requirements-faces.txt): the built-in dataset builder and the ONNX judge.
def test_builtin_builder_and_onnx_judge(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gan_face_generate")
    root = str(tmp_path / "builtin")
    tool = load_tool("face_builtin")
    tool.build(root, 40, show=False)
    names, files, vals = fa.read_rows(os.path.join(root, "list_attr_celeba.txt"), ("1", "-1"), attrs=True)
    attrs = torch.from_numpy(vals == "1")  # (40, 3) bool
    assert names == ["Male", "Young", "Mouth_Slightly_Open"] and len(files) == 40 and attrs.shape == (40, 3)
    part = [ln.split()[1] for ln in open(os.path.join(root, "list_eval_partition.txt"))]
    assert part == ["0"] * 32 + ["1"] * 4 + ["2"] * 4  # train, validation, test
    faces = fa.load_images([os.path.join(root, "img_align_celeba", f) for f in files], 64, "x", False)
    args = fa.get_args(["--data", root, "--size", "64", "--test-size", "4", "--batch-size", "2"])
    data = fa.load_faces(args, root, show=False)  # the builder's folder goes through the CelebA loader
    assert len(data["test"]) == 4 and len(data["val"]) > 0 and data["judge_data"] is not None
    judge = tool.OnnxJudge()
    assert torch.equal(judge.attributes(faces), attrs)  # the labels are the judge's own calls
    assert 0 < attrs[:, 0].sum() < 40  # both genders occur


# ----------------------------------------------------------------------------------------------
# The benchmark runner's table: mean ± std over seeds from the runs' results.json files.
def test_bench_table(tmp_path):
    import argparse
    fb = load_tool("face_bench")
    rates = {"sr-female": (0.6, 0.55), "sr-male": (0.2, 0.35), "sr-unbiased": (0.4, 0.45), "sr-paired": (0.5, 0.5)}
    for name, (onnx, cnn) in rates.items():
        for s, d in ((0, -0.1), (1, 0.1)):
            run = tmp_path / f"{name}-s{s}"
            run.mkdir()
            res = {"psnr_hr": 26 + d, "ssim_hr": 0.7, "psnr_lr": 40, "attr_rate_onnx": onnx + d, "attr_rate_cnn": cnn,
                   "psnr_hr_bicubic": 27.5, "ssim_hr_bicubic": 0.8, "psnr_lr_bicubic": 39,
                   "attr_rate_onnx_bicubic": 0.7, "attr_rate_cnn_bicubic": 0.52, "attr_rate_gt_onnx": 0.5,
                   "attr_rate_gt_cnn": 0.51, "steps": 100, "n_test": 10, "images_per_s": 50.0,
                   "judge_acc_onnx": 1.0, "judge_acc_cnn": 0.7 + d / 10}
            (run / "results.json").write_text(json.dumps(res))
            (run / "versions.json").write_text(json.dumps({"cuda": None, "processor": "x86_64", "cpu_threads": 1,
                                                           "torch": "2.13.0"}))
            (run / "bench_wall.json").write_text(json.dumps({"wall_total_s": 60.0}))
    md = fb.table(argparse.Namespace(out=str(tmp_path), seeds=[0, 1, 2]))
    # female vs male memory: A - B = 40 points (onnx, both seeds) and 20 points (cnn); the judges agree
    assert ("| gender: judged female | onnx | 0.600 ± 0.100 | 0.200 ± 0.100 | 0.400 ± 0.100 | 0.700 ± 0.000 | "
            "0.500 ± 0.000 | **+40.0** | +40.0 / +40.0 | yes | 40.00 ± 0.00 / 40.00 ± 0.00 | 2/2 | +100.0 ± 0.0 |") in md
    assert "| **+20.0** | +20.0 / +20.0 | yes | 40.00 ± 0.00 / 40.00 ± 0.00 | 2/2 | +40.0 ± 2.0 |" in md  # 2 acc - 1
    assert "| gender: judged female | cnn | 0.550 ± 0.000 | 0.350 ± 0.000 | 0.450 ± 0.000 |" in md
    assert "| **+20.0** | +20.0 / +20.0 |" in md
    assert "age:" not in md and "mouth:" not in md  # pairs without runs are left out
    assert "| posterior-sampler estimate (paired bound − 3.01 dB) | 22.99 ± 0.10 |" in md
    assert "| bicubic (no training) | 27.50 ± 0.00 |" in md and "Seeds [0, 1]" in md
    cmd = fb.command(argparse.Namespace(out="O", extra=["--steps", "9"]), "sr-unbiased_old", 1)
    assert cmd[2:6] == ["--resume", os.path.join("O", "sr-unbiased-s1", "ckpt.pt"), "--eval-only", "--judge-attr"]


# ----------------------------------------------------------------------------------------------
# The skeleton: standalone copy, bad inputs as one-line errors, all ranks stop together.
def test_standalone_copy_trains_resumes_evaluates_predicts(tmp_path):
    folder = standalone_copy("face_aign.py", tmp_path / "alone")
    env = {"AIGN_CACHE": str(tmp_path / "cache")}  # empty: no built-in dataset to fall back on
    celeba = make_celeba(tmp_path / "celeba", n=40)
    run = tmp_path / "run"
    run_cli("face_aign.py", "--data", celeba, "--out", run, "--steps", 2, "--eval-every", 2, *SMALL, cwd=folder,
            env=env)
    run_cli("face_aign.py", "--data", celeba, "--resume", run / "ckpt.pt", "--steps", 4, *SMALL, cwd=folder,
            env=env)
    assert json.load(open(run / "results.json"))["steps"] == 4
    run_cli("face_aign.py", "--data", celeba, "--resume", run / "ckpt.pt", "--eval-only", "--out", tmp_path / "ev",
            "--test-size", "8", "--judge-steps", "5", "--no-progress", cwd=folder, env=env)
    ev = json.load(open(tmp_path / "ev" / "results.json"))
    assert ev["step"] == 4 and ev["judge"] == "none"  # labelled data, but the CNN judge's tool is not here
    p = run_cli("face_aign.py", "--data", celeba, "--resume", run / "ckpt.pt", "--eval-only", "--judge", "cnn",
                "--out", tmp_path / "ev2", *SMALL, cwd=folder, env=env, check=False)
    one_line_error(p, "face_cnn_judge.py is not here", "--judge cnn needs it")
    run_cli("face_aign.py", "--predict", make_folder(tmp_path / "lr", 1, size=8), "--resume", run / "ckpt.pt",
            "--out", tmp_path / "pred", cwd=folder, env=env)
    assert os.path.exists(tmp_path / "pred" / "face0.png")
    # a plain folder of faces with a folder memory (the "one person" memory), no labels, no judge
    faces, person = make_folder(tmp_path / "faces", 20), make_folder(tmp_path / "person", 6, seed=5)
    run_cli("face_aign.py", "--data", faces, "--memory", person, "--out", tmp_path / "plain", "--steps", 2,
            *SMALL, cwd=folder, env=env)
    res = json.load(open(tmp_path / "plain" / "results.json"))
    assert res["judge"] == "none" and res["n_memory"] == 6
    # no --data and no tools/ beside the copy: one line saying how to get data
    p = run_cli("face_aign.py", "--out", tmp_path / "none", *SMALL, cwd=folder, env=env, check=False)
    one_line_error(p, "no --data given", "pass --data")


@pytest.mark.parametrize("argv, flag", [
    (["--steps", "-5"], "--steps"), (["--batch-size", "0"], "--batch-size"), (["--lambda-adv", "-1"], "--lambda-adv"),
    (["--eval-every", "0"], "--eval-every"), (["--paired-frac", "1.5"], "--paired-frac"), (["--lr", "nan"], "--lr"),
    (["--max-images", "-30"], "--max-images"), (["--channels", "1"], "--channels"), (["--size", "48"], "--size"),
    (["--jitter", "-1"], "--jitter"), (["--test-size", "0"], "--test-size"), (["--lambda-sup", "inf"], "--lambda-sup"),
    (["--ema", "1"], "--ema"), (["--d-lr", "0"], "--lr-d"), (["--lr-d", "0"], "--lr-d"),
    (["--task", "inpaint", "--jitter", "0.1"], "out of D's hole crop")])
def test_bad_flag_values_are_one_line_errors(tmp_path, argv, flag):
    p = run_cli("face_aign.py", "--data", tmp_path / "none", "--out", tmp_path / "run", *argv, check=False)
    one_line_error(p, flag)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_count_line_that_disagrees_with_the_rows_is_reported(tmp_path, capsys):
    d = make_celeba(tmp_path, n=6, partition=False)
    path = os.path.join(d, "list_attr_celeba.txt")
    text = open(path).read()
    open(path, "w").write("202599" + text[1:])  # e.g. the first rows of CelebA's list, kept on purpose
    names, files, vals = fa.read_rows(path, ("1", "-1"), attrs=True)
    assert names == ["Male", "Young", "Big_Lips"] and len(files) == 6 and vals.shape == (6, 3)
    assert "its count line says 202599; reading the 6 rows" in capsys.readouterr().out


def test_bad_files_are_one_line_errors(tmp_path, sr_run):
    # non-UTF-8 label files
    for name, good in (("list_attr_celeba.txt", None), ("list_eval_partition.txt", None)):
        d = make_celeba(tmp_path / name, n=8)
        path = os.path.join(d, name)
        with open(path, "ab") as f:
            f.write("caf\xe9 1\n".encode("latin-1"))
        p = run_cli("face_aign.py", "--data", d, "--out", tmp_path / f"run_{name}", *SMALL, check=False)
        one_line_error(p, name, "not UTF-8")
    d = make_celeba(tmp_path / "badpart", n=8)
    with open(os.path.join(d, "list_eval_partition.txt"), "a") as f:
        f.write("000001.jpg test\n")
    one_line_error(run_cli("face_aign.py", "--data", d, "--out", tmp_path / "bp", *SMALL, check=False),
                   "list_eval_partition.txt:9", "0, 1, 2")
    d = make_celeba(tmp_path / "shortpart", n=8)  # an image without a partition row is not silently trained on
    rows = open(os.path.join(d, "list_eval_partition.txt")).readlines()
    open(os.path.join(d, "list_eval_partition.txt"), "w").writelines(rows[:-1])
    one_line_error(run_cli("face_aign.py", "--data", d, "--out", tmp_path / "sp", *SMALL, check=False),
                   "list_eval_partition.txt: no row for 1 image(s)", "e.g. 000008.jpg")
    # a checkpoint of another script, one with keys missing, a file as --out
    other = tmp_path / "other.pt"
    net = torch.nn.Linear(2, 2)
    common.save_checkpoint(str(other), script="pose_aign", step=1, args=fa.get_args([]), nets={"G": net},
                           opts={"G": torch.optim.Adam(net.parameters())}, data_rng=torch.Generator(),
                           wall_s=1.0, samples=1)
    p = run_cli("face_aign.py", "--resume", other, "--eval-only", "--out", tmp_path / "o", check=False)
    one_line_error(p, "not a checkpoint of face_aign.py", "pose_aign")
    torch.save({"script": "face_aign", "step": 3}, tmp_path / "partial.pt")
    p = run_cli("face_aign.py", "--resume", tmp_path / "partial.pt", "--out", tmp_path / "o", check=False)
    one_line_error(p, "incomplete checkpoint")
    (tmp_path / "afile").write_text("x")
    p = run_cli("face_aign.py", "--data", tmp_path / "none", "--out", tmp_path / "afile", check=False)
    one_line_error(p, "--out", "is a file")


def test_resuming_a_finished_run_keeps_its_throughput(tmp_path, celeba, sr_run):
    import shutil
    run = tmp_path / "again"
    run.mkdir()
    shutil.copy(sr_run / "ckpt.pt", run / "ckpt.pt")
    run_cli("face_aign.py", "--data", celeba, "--resume", run / "ckpt.pt", "--steps", 4, *SMALL)
    a, b = json.load(open(sr_run / "results.json")), json.load(open(run / "results.json"))
    assert b["images_per_s"] == a["images_per_s"] and b["wall_s"] == a["wall_s"] and b["images_per_s"] > 0
    assert b["psnr_hr"] == a["psnr_hr"]


def test_paired_supervision_uses_only_paired_faces():
    raw, hr = torch.zeros(4, 3, 2, 2), torch.ones(4, 3, 2, 2)
    hr[0] = 3
    assert fa.sup_loss(raw, hr, torch.tensor([True, False, False, False])).item() == 9
    assert fa.sup_loss(raw, hr, torch.zeros(4, dtype=torch.bool)).item() == 0
    # --paired-frac 1 --lambda-sup 1 --lambda-rec 0: the old --paired baseline (HR MSE + adversarial term)
    args = fa.get_args(["--paired-frac", "1", "--lambda-sup", "1", "--lambda-rec", "0", "--lambda-adv", "0.001"])
    assert (args.paired_frac, args.lambda_sup, args.lambda_rec, args.lambda_adv) == (1, 1, 0, 0.001)


# ----------------------------------------------------------------------------------------------
# Judges: the mouth rule reads only the mouth box (the paste test); the CNN judge is trained once;
# D's accuracy on memory vs outputs.
def test_mouth_rule_hand_computed_and_follows_a_pasted_mouth():
    tool = load_tool("face_builtin")
    assert tool.MOUTH_BOX == fa.BOXES["mouth"]  # the rule reads the inpainting hole
    y0, y1, x0, x1 = 42, 58, 19, 45  # the mouth box of a 64x64 face
    face = torch.full((1, 3, 64, 64), 120, dtype=torch.uint8)
    face[:, :, y0:y0 + 4, x0:x1] = 30  # 4 of 16 rows dark: 25% of the box below 0.6 x median luma
    assert tool.mouth_dark_frac(face).item() == pytest.approx(0.25) and tool.mouth_open(face).item()
    face[:, :, y0 + 1:y0 + 4, x0:x1] = 120  # 1 row: 6.25% -> closed
    assert tool.mouth_dark_frac(face).item() == pytest.approx(1 / 16) and not tool.mouth_open(face).item()
    face[:, :, :y0] = 0  # pixels outside the box do not count
    assert tool.mouth_dark_frac(face).item() == pytest.approx(1 / 16)
    g = torch.Generator().manual_seed(0)
    hosts, donors = (torch.randint(0, 256, (16, 3, 64, 64), generator=g, dtype=torch.uint8) for _ in range(2))
    donors[:8, :, 45:50] //= 4  # half of the donors with a dark band in the mouth
    pasted = hosts.clone()
    pasted[:, :, y0:y1, x0:x1] = donors[:, :, y0:y1, x0:x1]
    assert torch.equal(tool.mouth_dark_frac(pasted), tool.mouth_dark_frac(donors))  # donor weight 1, host 0
    assert tool.mouth_open(pasted)[:8].all()


def test_fills_tool_hand_computed_and_bad_input(sr_run):
    tool = load_tool("face_fills")
    face = torch.full((4, 3, 64, 64), 120, dtype=torch.uint8)
    face[:2, :, 42:46, 19:45] = 30  # faces 0, 1: 4 of the box's 16 rows dark (open); faces 2, 3: none
    s = tool.fill_stats(face, torch.tensor([True, False, False, False]))
    assert (s["rate"], s["rate_open"], s["rate_closed"]) == (0.5, 1.0, pytest.approx(1 / 3))
    assert s["mean"] == pytest.approx(0.125) and list(s["quartiles"]) == pytest.approx([0, 0.125, 0.25])
    one_line_error(run_cli("tools/face_fills.py", sr_run / "ckpt.pt", check=False), "expected --task inpaint")
    one_line_error(run_cli("tools/face_fills.py", check=False), "checkpoints")


def test_reeval_tool_reproduces_the_run_and_evaluates_g_itself(celeba, sr_run, tmp_path):
    run_cli("tools/face_reeval.py", "--gen", "G_ema", "--out", tmp_path / "ema", sr_run)
    run_cli("tools/face_reeval.py", "--gen", "G_ema", "--split", "test", "--out", tmp_path / "ema_t", sr_run)
    run_cli("tools/face_reeval.py", "--split", "test", "--out", tmp_path / "g_t", sr_run)
    name = os.path.basename(sr_run)
    own = [json.loads(ln) for ln in open(sr_run / "metrics.jsonl")][-1]
    val = json.loads(open(tmp_path / "ema" / name / "metrics.jsonl").read())
    assert val["step"] == own["step"] == 4 and val["loss_d"] == own["loss_d"]
    assert all(val[k] == v for k, v in own.items() if k.startswith("val_"))  # G_ema: the run's own record
    res = json.load(open(sr_run / "results.json"))
    ema_t = json.load(open(tmp_path / "ema_t" / name / "results.json"))
    g_t = json.load(open(tmp_path / "g_t" / name / "results.json"))
    assert all(ema_t[k] == v for k, v in res.items()) and ema_t["evaluated"] == "G_ema"
    # G itself (= what --ema 0 evaluates): another generator after 4 steps at decay 0.99, same baseline
    assert g_t["evaluated"] == "G" and g_t["psnr_hr"] != res["psnr_hr"]
    assert g_t["psnr_hr_bicubic"] == res["psnr_hr_bicubic"] and g_t["steps"] == res["steps"]
    state = torch.load(sr_run / "ckpt.pt", weights_only=True)
    args = fa.get_args(["--data", str(json.load(open(sr_run / "args.json"))["data"]), *SMALL])
    data = fa.load_data(args, common.Dist("cpu"))
    G = fa.build_nets(args, torch.device("cpu"))["G"]
    G.load_state_dict(state["nets"]["G"])
    G.eval()
    with torch.no_grad():
        y = G(fa.make_input(args, fa.to_float(data["test"]), None)[0]).clamp(-1, 1)
    hr = (fa.to_float(data["test"]) + 1) / 2
    assert g_t["psnr_hr"] == pytest.approx(fa.psnr((y + 1) / 2, hr).mean().item(), abs=1e-5)
    # an eval-only run (no metrics.jsonl of its own) is re-evaluated from its checkpoint, step and loss of that run
    run_cli("face_aign.py", "--data", celeba, "--resume", sr_run / "ckpt.pt", "--eval-only", "--out", tmp_path / "ev",
            "--no-progress", "--test-size", "8", "--judge-steps", "5")
    run_cli("tools/face_reeval.py", "--gen", "G_ema", "--out", tmp_path / "ev_val", tmp_path / "ev")
    ev = json.loads(open(tmp_path / "ev_val" / "ev" / "metrics.jsonl").read())
    assert all(ev[k] == v for k, v in val.items() if k != "checkpoint")
    one_line_error(run_cli("tools/face_reeval.py", "--out", tmp_path / "x", tmp_path, check=False), "args.json")


def test_cnn_judge_is_trained_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGN_CACHE", str(tmp_path / "cache"))
    args = fa.get_args(["--size", "32", "--judge-steps", "3", "--judge", "cnn"])
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(8) % 2 == 0
    data = {"judge_data": (images, labels)}
    state = torch.random.get_rng_state()
    a = fa.make_judges(args, data)["cnn"]
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's RNG is untouched
    assert len(os.listdir(tmp_path / "cache" / "faces_judges")) == 1
    b = load_tool("face_cnn_judge").cnn_judge(images, labels, "-Male", 32, 3)  # cached, not retrained
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    load_tool("face_cnn_judge").cnn_judge(images, ~labels, "-Male", 32, 3)  # other labels: a judge of its own
    assert len(os.listdir(tmp_path / "cache" / "faces_judges")) == 2
    assert a(images).shape == (8,) and a.has(images, "-Male").dtype == torch.bool


def test_d_pool_sees_pooled_faces():
    torch.manual_seed(0)
    D = fa.Discriminator(32, 4, pool=2)
    y = torch.randn(3, 3, 32, 32)
    same = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(y, 2), scale_factor=2, mode="nearest")
    assert D(y).shape == (3,) and torch.allclose(D(y), D(same), atol=1e-6)  # detail below 2x2 is not seen
    assert len(fa.Discriminator(32, 4, pool=1).conv) == len(D.conv) + 2  # one stride-2 conv (+ ReLU) fewer


@pytest.mark.parametrize("size, region", [(32, "mouth"), (64, "mouth"), (64, "nose"), (128, "nose")])
def test_region_d_sees_the_hole_and_only_it(size, region):
    torch.manual_seed(0)
    j = round(0.03 * size)  # the largest box jitter
    shifts = torch.tensor([[dy, dx] for dy in (-j, j) for dx in (-j, j)])
    hidden = (fa.box_masks(4, size, region, shifts) == 0).any(0)[0]  # (S, S) every pixel a jittered box hides
    y0, x0, s = fa.hole_crop(size, region)
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[y0:y0 + s, x0:x0 + s] = True
    assert s == size // 2 and hidden.any() and not (hidden & ~inside).any()  # the crop holds every hole
    argv = ["--task", "inpaint", "--size", str(size), "--region", region, "--d-region"]
    D, y = fa.build_nets(fa.get_args(argv + ["hole"]), torch.device("cpu"))["D"], torch.randn(2, 3, size, size)
    assert D(torch.where(inside, y, torch.randn_like(y))).allclose(D(y), atol=1e-6)  # blind outside the crop
    assert not D(torch.where(inside, torch.randn_like(y), y)).allclose(D(y), atol=1e-3)
    # both: one logit = the whole face's D + the crop's D (a linear layer on both feature sets)
    both = fa.build_nets(fa.get_args(argv + ["both"]), torch.device("cpu"))["D"]
    face, hole = both
    assert face.crop is None and hole.crop == (slice(y0, y0 + s), slice(x0, x0 + s))
    assert both(y).allclose(face(y) + hole(y), atol=1e-6)


def test_d_accuracy_on_memory_and_outputs():
    args = fa.get_args(["--size", "32", "--judge", "none"])
    faces = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    ev = fa.EvalSet(args, faces, None, {}, faces, torch.device("cpu"), False)
    G = fa.build_nets(args, torch.device("cpu"))["G"]

    class Says(torch.nn.Module):  # a D that calls every face real (logit 1) or every face fake (-1)
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, y):
            return torch.full((len(y),), self.v)
    m = ev.evaluate(G, Says(1.0), None, 0)
    assert (m["d_acc_mem"], m["d_acc_out"]) == (1.0, 0.0)
    m = ev.evaluate(G, Says(-1.0), None, 0)
    assert (m["d_acc_mem"], m["d_acc_out"]) == (0.0, 1.0)


def worker_pids(parent):
    """Pids of the processes whose parent is `parent` (torchrun's workers), with their RANK."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                out[int(pid)] = next(int(e[5:]) for e in env if e.startswith(b"RANK="))
        except (OSError, StopIteration, ValueError):
            pass
    return out


def test_torchrun_sigterm_to_one_rank_stops_both(celeba, tmp_path):
    out = tmp_path / "ddp_stop"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "face_aign.py",
           "--data", celeba, "--out", str(out), "--steps", "100000", "--eval-every", "5", *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while not (out / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        workers = worker_pids(proc.pid)
        assert (out / "ckpt.pt").exists() and sorted(workers.values()) == [0, 1], workers
        os.kill(next(p for p, r in workers.items() if r == 1), signal.SIGTERM)  # rank 1 only
        log = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-3000:]
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert 5 <= step < 100000 and f"stopped at step {step}" in log
    run_cli("face_aign.py", "--data", celeba, "--resume", out / "ckpt.pt", "--steps", step + 2, *SMALL)
    assert json.load(open(out / "results.json"))["steps"] == step + 2


def test_bound_tool_nearest_explain_and_30_db():
    bound = load_tool("face_bound")
    g = torch.Generator().manual_seed(0)
    mem = torch.rand(20, 3, 16, 16, generator=g) - 0.5                   # (M, 3, S, S), clear of the clamp
    x = fa.render_sr(mem[[3, 7, 11]], 4) + 0.01                         # (3, 3, 4, 4) near memory 3 / 7 / 11
    assert bound.nearest(x, fa.render_sr(mem, 4)).tolist() == [3, 7, 11]
    m = mem[[0, 1, 2]]
    exact = bound.explain(m, x, 4, iters=60)
    assert (bound.lr_psnr(exact, x, 4) > 45).all()                       # explains x (clamping aside)
    half = bound.at_psnr(m, exact, x, 4, target=30.0)
    assert torch.allclose(bound.lr_psnr(half, x, 4), torch.full((3,), 30.0, dtype=torch.float64), atol=0.05)
    close = exact + 0.001 * torch.randn(exact.shape, generator=g)       # above 30 dB already: kept as it is
    assert torch.allclose(bound.at_psnr(close, exact, x, 4, target=30.0), close.clamp(-1, 1), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Real CelebA layouts, and hostile lists, folders, flags and checkpoints (one clear error each).
def test_official_celeba_layouts_and_a_bom_load(tmp_path):
    import shutil
    ref = make_celeba(tmp_path / "flat", n=12)
    want = fa.load_faces(fa.get_args(["--data", ref, "--size", "32", "--batch-size", "2"]), ref, show=False)
    for name, img_dir in (("official", "Img/img_align_celeba"), ("kaggle", "img_align_celeba/img_align_celeba"),
                          ("png", "Img/img_align_celeba_png")):
        d = tmp_path / name  # the Google Drive download: Anno/, Eval/, Img/; Kaggle's nested image folder
        shutil.copytree(os.path.join(ref, "img_align_celeba"), d / img_dir)
        if name == "png":  # the official lossless set: the same faces as NNNNNN.png, the lists naming .jpg
            import imageio.v3 as iio
            for f in glob.glob(str(d / img_dir / "*.jpg")):
                iio.imwrite(f[:-4] + ".png", iio.imread(f))
                os.remove(f)
        (d / "Anno").mkdir()
        (d / "Eval").mkdir()
        for f, sub in (("list_attr_celeba.txt", "Anno"), ("list_eval_partition.txt", "Eval")):
            text = open(os.path.join(ref, f), "rb").read().replace(b"\n", b"\r\n")
            (d / sub / f).write_bytes(b"\xef\xbb\xbf" + text if name == "kaggle" else text)  # a BOM, CRLF
        data = fa.load_faces(fa.get_args(["--data", str(d), "--size", "32", "--batch-size", "2"]), str(d), False)
        assert all(torch.equal(data[k], want[k]) for k in ("inputs", "mem", "val", "test"))
    d = tmp_path / "kaggle_csv"  # Kaggle's copy as it ships: comma-separated lists with one header line
    shutil.copytree(os.path.join(ref, "img_align_celeba"), d / "img_align_celeba" / "img_align_celeba")
    lines = open(os.path.join(ref, "list_attr_celeba.txt")).read().split("\n")
    (d / "list_attr_celeba.csv").write_text("\n".join(",".join(["image_id", *lines[1].split()]) if i == 1 else
                                                      ",".join(ln.split()) for i, ln in enumerate(lines) if i))
    part = open(os.path.join(ref, "list_eval_partition.txt")).read().split()
    (d / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(
        f"{f},{p}\n" for f, p in zip(part[::2], part[1::2])))
    data = fa.load_faces(fa.get_args(["--data", str(d), "--size", "32", "--bias", "-Male", "--batch-size", "2"]), str(d), False)
    bias = fa.load_faces(fa.get_args(["--data", ref, "--size", "32", "--bias", "-Male", "--batch-size", "2"]), ref, show=False)
    assert all(torch.equal(data[k], bias[k]) for k in ("inputs", "mem", "val", "test"))


def test_hostile_lists_folders_and_flags_are_one_line_errors(tmp_path):
    d = make_celeba(tmp_path / "c", n=8)
    small = ["--size", "32", "--batch-size", "2", "--test-size", "4"]
    load = lambda *a: fa.load_faces(fa.get_args(["--data", d, *small, *a]), d, show=False)  # noqa: E731
    with pytest.raises(InputError, match="Beard.: not in"):  # an explicit --judge-attr is not silently dropped
        load("--judge-attr", "Beard")
    with pytest.raises(InputError, match="--judge cnn: .* 6 faces leave 4 training faces, none held out"):
        load("--judge", "cnn", "--max-images", "6")
    assert load("--max-images", "6")["judge_data"] is None  # auto: no CNN judge then (was a traceback)
    gone = make_celeba(tmp_path / "gone", n=8)
    os.remove(os.path.join(gone, "img_align_celeba", "000003.jpg"))
    with pytest.raises(InputError, match=r"000003.jpg: no such file, named in .*list_attr_celeba.txt \(1 of 8 missing"):
        fa.load_faces(fa.get_args(["--data", gone, *small]), gone, show=False)
    with pytest.raises(InputError, match=r"memory: 0 faces \(--bias -Male\), expected at least one \(--eval"):
        load("--bias", "-Male", "--eval-only", "--resume", "x.pt", "--max-images", "1")  # D's accuracy: NaN
    path = os.path.join(d, "list_attr_celeba.txt")
    open(path, "a").write("000001.jpg 1 1 1\n")  # a face twice: it could be a test face and a training face
    with pytest.raises(InputError, match="000001.jpg has two rows"):
        load()
    with pytest.raises(InputError, match="list_attr_celeba.txt: not a folder"):
        fa.list_images(path)
    with pytest.raises(InputError, match="argument --task: invalid choice"):  # one line, not argparse's usage
        fa.get_args(["--task", "denoise"])


def test_damaged_checkpoint_args_and_predict_name_clashes(tmp_path, celeba, sr_run):
    import imageio.v3 as iio
    state = torch.load(sr_run / "ckpt.pt", weights_only=True)
    for key, value, match in (("size", 32.5, "invalid int value: '32.5'"), ("region", "ear", "invalid choice"),
                              ("channels", -8, "--channels -8"), ("lr", "fast", "invalid float value")):
        edited = {**state, "args": {**state["args"], key: value}}
        torch.save(edited, tmp_path / f"{key}.pt")
        bad(["--data", celeba, "--resume", str(tmp_path / f"{key}.pt"), "--out", str(tmp_path / key), *SMALL,
             *(["--eval-only"] if key != "lr" else [])], f"--resume .*{key}.pt: a damaged or edited .*{match}")
    d = make_folder(tmp_path / "lr", 2, size=8)
    iio.imwrite(os.path.join(d, "face0.jpg"), np.zeros((8, 8, 3), np.uint8))  # face0.jpg beside face0.png
    try:
        fa.main(["--predict", d, "--resume", str(sr_run / "ckpt.pt"), "--out", str(tmp_path / "pred")])
    finally:
        common.release_lock()
    assert sorted(f for f in os.listdir(tmp_path / "pred") if f.endswith(".png")) == \
        ["face0.jpg.png", "face0.png.png", "face1.png"]  # none overwrites another
