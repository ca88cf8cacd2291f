"""face_aign.py: renderers, loaders, metrics, CLI (train, resume, eval-only, predict, torchrun), learning.
Runs without the optional face packages: the data are tiny procedural CelebA-layout fixtures."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import run_cli
import face_aign as fa
from common import InputError

SMALL = ["--size", "32", "--width", "8", "--blocks", "1", "--batch-size", "4", "--test-size", "8",
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
    """One small sr training run shared by the checks that need a checkpoint."""
    out = tmp_path_factory.mktemp("sr_run")
    run_cli("face_aign.py", "--data", celeba, "--out", out, "--steps", 4, "--eval-every", 2, *SMALL)
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
    _, names, attrs = fa.read_celeba_attrs(os.path.join(celeba, "list_attr_celeba.txt"))
    all_faces = fa.load_images([os.path.join(celeba, "img_align_celeba", f"{i + 1:06d}.jpg") for i in range(60)],
                               32, "x", False)
    male = {face_key(f): bool(attrs[i, 0]) for i, f in enumerate(all_faces)}
    inputs = {face_key(f) for f in data["inputs"]}
    mem = {face_key(f) for f in data["mem"]}
    test = {face_key(f) for f in data["test"]}
    assert not (inputs & mem) and not (inputs & test) and not (mem & test)
    assert mem and not any(male[k] for k in mem)  # a female-only memory
    assert any(male[k] for k in inputs) and not all(male[k] for k in inputs)  # inputs of every kind
    assert len(test) == 8 and data["test_labels"].sum().item() == 4  # balanced on -Male
    assert data["inputs"].shape[1:] == (3, 32, 32) and data["inputs"].dtype == torch.uint8


def test_plain_folder_with_memory(tmp_path):
    data_dir, mem_dir = make_folder(tmp_path / "faces", 20), make_folder(tmp_path / "person", 6, seed=5)
    args = fa.get_args(["--data", data_dir, "--memory", mem_dir, "--size", "32", "--batch-size", "4"])
    data = fa.load_faces(args, data_dir, show=False)
    assert len(data["mem"]) == 6 and len(data["test"]) == 2 and len(data["inputs"]) == 18
    assert data["judge_data"] is None and data["test_labels"] is None


def bad(argv, match):
    with pytest.raises(InputError, match=match):
        fa.main(argv)


def test_bad_inputs(tmp_path, celeba, cache_root):
    import imageio.v3 as iio
    out = ["--out", str(tmp_path / "run"), *SMALL]
    (tmp_path / "empty").mkdir()
    bad(["--data", str(tmp_path / "empty"), *out], "no images found")
    bad(["--data", str(tmp_path / "missing"), *out], "no such folder")
    d = make_folder(tmp_path / "broken", 3)
    (tmp_path / "broken" / "zz.jpg").write_bytes(b"not an image")
    bad(["--data", d, *out], "zz.jpg: cannot be read as an image")
    d = make_folder(tmp_path / "gray", 3)
    iio.imwrite(tmp_path / "gray" / "g.png", np.zeros((32, 32), np.uint8))
    bad(["--data", d, *out], r"g.png: expected an 8-bit RGB image")
    bad(["--data", celeba, "--bias", "Beard", *out], "'Beard': not in .* Male, Young, Big_Lips")
    small = make_folder(tmp_path / "small", 2)
    bad(["--data", celeba, "--memory", small, *out], "memory: 2 faces .* at least one batch")
    bad(["--data", celeba, *out, "--size", "48"], "--size 48")
    with open(tmp_path / "attr.txt", "w") as f:
        f.write("2\nMale\n000001.jpg 1\n000002.jpg 0\n")
    with pytest.raises(InputError, match=r"attr.txt:4: expected a filename and 1 values"):
        fa.read_celeba_attrs(str(tmp_path / "attr.txt"))
    with pytest.raises(InputError, match="requirements-faces.txt"):
        fa.package_file("no-such-face-package", "no_such_face_package", "weights.tar")


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
              "attr_rate", "attr_rate_bicubic", "attr_rate_gt", "judge_acc", "steps", "wall_seconds",
              "images_per_s"):
        assert k in res, k
    assert res["steps"] == 4 and res["judge"] == "cnn" and res["attr_rate_gt"] == 0.5
    lines = [json.loads(ln) for ln in open(sr_run / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [2, 4]
    for f in ("ckpt.pt", "samples.png", "training.gif", "args.json", "versions.json", "command.txt"):
        assert (sr_run / f).exists(), f


def test_resume_is_exact(celeba, sr_run, tmp_path):
    out = tmp_path / "resumed"
    run_cli("face_aign.py", "--data", celeba, "--out", out, "--steps", 2, "--eval-every", 2, *SMALL)
    run_cli("face_aign.py", "--data", celeba, "--resume", out / "ckpt.pt", "--steps", 4, "--eval-every", 2, *SMALL)
    a = torch.load(sr_run / "ckpt.pt", weights_only=True)
    b = torch.load(out / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["G"]:
        assert torch.equal(a["G"][k], b["G"][k]), k
    for k in a["D"]:
        assert torch.equal(a["D"][k], b["D"][k]), k
    ra, rb = json.load(open(sr_run / "results.json")), json.load(open(out / "results.json"))
    assert ra["psnr_hr"] == rb["psnr_hr"] and ra["attr_rate"] == rb["attr_rate"]
    assert [json.loads(ln)["step"] for ln in open(out / "metrics.jsonl")] == [2, 4]


def test_eval_only_and_predict(celeba, sr_run, tmp_path):
    out = tmp_path / "eval"
    run_cli("face_aign.py", "--data", celeba, "--resume", sr_run / "ckpt.pt", "--eval-only", "--out", out,
            "--no-progress", "--test-size", "8")
    ev = json.load(open(out / "eval_results.json"))
    res = json.load(open(sr_run / "results.json"))
    assert ev["psnr_hr"] == pytest.approx(res["psnr_hr"]) and ev["step"] == 4
    lr = make_folder(tmp_path / "lr", 2, size=8)  # matches the model's 32/4 input
    make_folder(tmp_path / "lr_big", 1, size=20)  # resized to the input size
    run_cli("face_aign.py", "--predict", lr, "--resume", sr_run / "ckpt.pt", "--out", tmp_path / "pred")
    run_cli("face_aign.py", "--predict", tmp_path / "lr_big", "--resume", sr_run / "ckpt.pt",
            "--out", tmp_path / "pred")
    import imageio.v3 as iio
    assert sorted(os.listdir(tmp_path / "pred")) == ["face0.png", "face1.png"]
    assert iio.imread(tmp_path / "pred" / "face0.png").shape == (32, 32, 3)


def test_inpaint_train_and_predict(celeba, tmp_path):
    out = tmp_path / "inp"
    run_cli("face_aign.py", "--task", "inpaint", "--region", "nose", "--bias", "Big_Lips", "--data", celeba,
            "--out", out, "--steps", 2, "--eval-every", 2, "--gan", "lsgan", *SMALL)
    res = json.load(open(out / "results.json"))
    assert res["baseline"] == "fill" and "psnr_hr_fill" in res and res["judge_attr"] == "Big_Lips"
    assert res["psnr_lr"] == pytest.approx(100.0)  # visible pixels are copied from the input
    faces = make_folder(tmp_path / "faces", 1, size=40)
    run_cli("face_aign.py", "--predict", faces, "--resume", out / "ckpt.pt", "--out", tmp_path / "pred")
    assert os.path.exists(tmp_path / "pred" / "face0.png")


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
            "--lambda-adv", 0, "--judge", "none", *SMALL)
    res = json.load(open(out / "results.json"))
    assert res["psnr_lr"] > res["psnr_lr_bicubic"] + 1.0, res


# ----------------------------------------------------------------------------------------------
# Optional packages (requirements-faces.txt): the built-in dataset builder and the ONNX judge.
def test_builtin_builder_and_onnx_judge(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gan_face_generate")
    root = str(tmp_path / "builtin")
    fa.build_builtin(root, 40, show=False)
    files, names, attrs = fa.read_celeba_attrs(os.path.join(root, "list_attr_celeba.txt"))
    assert names == ["Male", "Young"] and len(files) == 40 and attrs.shape == (40, 2)
    faces = fa.load_images([os.path.join(root, "img_align_celeba", f) for f in files], 64, "x", False)
    judge = fa.OnnxJudge()
    assert torch.equal(judge.attributes(faces), attrs)  # the labels are the judge's own calls
    assert 0 < attrs[:, 0].sum() < 40  # both genders occur


# ----------------------------------------------------------------------------------------------
# The benchmark runner's table: mean ± std over seeds from the runs' results.json files.
def test_bench_table(tmp_path):
    import argparse
    import importlib.util
    spec = importlib.util.spec_from_file_location("face_bench", os.path.join(os.path.dirname(fa.__file__),
                                                                            "tools", "face_bench.py"))
    fb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fb)
    for slug, rate in (("sr-unbiased_memory", 0.4), ("sr-female_memory", 0.6)):
        for s, d in ((0, -0.1), (1, 0.1)):
            run = tmp_path / f"{slug}-s{s}"
            run.mkdir()
            res = {"psnr_hr": 26 + d, "ssim_hr": 0.7, "psnr_lr": 40, "attr_rate": rate + d, "psnr_hr_bicubic": 27.5,
                   "ssim_hr_bicubic": 0.8, "psnr_lr_bicubic": 39, "attr_rate_bicubic": 0.7, "attr_rate_gt": 0.5,
                   "steps": 100, "n_test": 10, "judge": "onnx", "images_per_s": 50.0}
            (run / "results.json").write_text(json.dumps(res))
            (run / "versions.json").write_text(json.dumps({"cuda": None, "processor": "x86_64", "cpu_threads": 2,
                                                           "torch": "2.13.0"}))
            (run / "bench_wall.json").write_text(json.dumps({"wall_total_s": 60.0}))
    md = fb.table(argparse.Namespace(out=str(tmp_path), seeds=[0, 1], attr="-Male"))
    assert "| AIGN SR, female memory | 26.00 ± 0.10 | 0.700 ± 0.000 | 40.00 ± 0.00 | 0.600 ± 0.100 | 60 ± 0 |" in md
    assert "| bicubic upsampling (no training) | 27.50 ± 0.00 |" in md and "paired" not in md
    assert "judged female |" in md
    # --attr -Young: the biased rows are the old memory's; the female runs are not read
    for s in (0, 1):
        (tmp_path / f"sr-female_memory-s{s}").rename(tmp_path / f"sr-old_memory-s{s}")
    md = fb.table(argparse.Namespace(out=str(tmp_path), seeds=[0, 1], attr="-Young"))
    assert "| AIGN SR, old memory | 26.00 ± 0.10 |" in md and "judged old |" in md and "female" not in md
    assert fb.runs("-Young")["AIGN SR, old memory"] == ["--task", "sr", "--bias", "-Young"]
