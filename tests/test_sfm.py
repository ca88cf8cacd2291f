"""sfm_aign.py: renderer, loaders, metrics, command line and a short learning test."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sfm_aign as S
from tools import sfm_builtin as B
from conftest import run_cli

SCRIPT = "sfm_aign.py"


# ----------------------------------------------------------------------------------------------
# Fixtures: tiny procedural datasets written in each layout the loaders read.
def street(seed, n):
    rng = np.random.default_rng(seed)
    poses = B.camera_path(rng, n)
    return B.street_scene(rng, poses[-1, 2, 3] + 40), poses


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """train/ (2 sequences), memory/ (1), test/ (1): 8 frames of 32x96, trained at 16x48."""
    root = tmp_path_factory.mktemp("sfm_tiny")
    K = S.builtin_K(32, 96)
    for role, seeds in (("train", (0, 1)), ("memory", (2,)), ("test", (3,))):
        for s in seeds:
            boxes, poses = street(s, 8)
            B.write_sequence(str(root / role / f"{role}_{s}"), boxes, poses, K, 32, 96)
    return root


SMALL = ["--height", 16, "--width", 48, "--batch-size", 2, "--no-progress"]


def gt_view_pair(h, w, ss=4, gap=2, seed=3):
    """Two supersampled views of a street with the target's GT depth and the target->source motion."""
    boxes, P = street(seed, 8)
    K = S.builtin_K(h, w)
    hi = S.rescale_K(K, ss, ss)
    views = [F.avg_pool2d(B.render_view(boxes, P[i], hi, h * ss, w * ss)[0][None], ss)[0] for i in (4, 4 + gap)]
    depth = B.render_view(boxes, P[4], K, h, w)[1]
    pose = S.matrix_to_pose6(torch.from_numpy(np.linalg.inv(P[4 + gap]) @ P[4]))
    return views[0], views[1], depth, pose, K


# ----------------------------------------------------------------------------------------------
# Renderer
def test_renderer_reproduces_target_from_gt():
    tgt, src, depth, pose, K = gt_view_pair(48, 160, gap=3)
    d = torch.where(depth > 0, depth, torch.full_like(depth, 1e4))[None, None]  # sky: infinitely far
    Kt = torch.tensor(K, dtype=torch.float32)[None]
    warped, valid = S.inverse_warp(src[None], d, pose[None].float(), Kt)
    m = (valid[0, 0] > 0) & (depth > 0)
    err = (warped[0] - tgt).abs().mean(0)[m]
    unwarped = (src - tgt).abs().mean(0)[m]
    assert m.float().mean() > 0.5
    assert err.median() < 0.01 and err.mean() < 0.4 * unwarped.mean()
    for wrong in (0.7, 1.4):  # a wrong depth scale with the true motion is clearly worse
        w, _ = S.inverse_warp(src[None], d * wrong, pose[None].float(), Kt)
        assert (w[0] - tgt).abs().mean(0)[m].mean() > 1.3 * err.mean()
    # A flipped translation (the world sliding back instead of the camera moving forward) is caught.
    flipped = pose.clone()
    flipped[3:] *= -1
    w2, v2 = S.inverse_warp(src[None], d, flipped[None].float(), Kt)
    m2 = m & (v2[0, 0] > 0)
    assert (w2[0] - tgt).abs().mean(0)[m2].mean() > 2 * (warped[0] - tgt).abs().mean(0)[m2].mean()


def naive_warp(src, depth, pose, K):
    """Per-pixel reference: back-project, move, project, bilinear sample with zero padding."""
    C, H, W = src.shape
    R = S.axis_angle_to_matrix(torch.as_tensor(pose[:3])).numpy()
    t, Kinv = np.asarray(pose[3:]), np.linalg.inv(K)
    out, valid = np.zeros((C, H, W)), np.zeros((H, W))
    for v in range(H):
        for u in range(W):
            X = R @ (depth[v, u] * Kinv @ np.array([u, v, 1.0])) + t
            p = K @ X
            if p[2] <= 1e-6:
                continue
            x, y = p[0] / p[2], p[1] / p[2]
            valid[v, u] = 0 <= x <= W - 1 and 0 <= y <= H - 1
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                wgt = (1 - abs(x - xi)) * (1 - abs(y - yi))
                if 0 <= xi < W and 0 <= yi < H:
                    out[:, v, u] += wgt * src[:, yi, xi]
    return out, valid


def test_renderer_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, 7, 9, generator=g, dtype=torch.float64)
    depth = 2 + 3 * torch.rand(2, 1, 7, 9, generator=g, dtype=torch.float64)
    pose = torch.tensor([[0.02, -0.05, 0.03, 0.3, -0.1, 0.5], [-0.1, 0.04, 0.0, -0.4, 0.2, -0.6]], dtype=torch.float64)
    K = torch.tensor([[6.0, 0, 4.1], [0, 5.5, 2.9], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    warped, valid = S.inverse_warp(src, depth, pose, K)
    for b in range(2):
        ref, ref_valid = naive_warp(src[b].numpy(), depth[b, 0].numpy(), pose[b].numpy(), K[b].numpy())
        np.testing.assert_allclose(warped[b].numpy(), ref, atol=1e-9)
        np.testing.assert_array_equal(valid[b, 0].numpy(), ref_valid)
    assert 0 < valid.mean() < 1  # both cases occur


def test_renderer_gradcheck():
    g = torch.Generator().manual_seed(1)
    src = torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    depth = (3 + torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    pose = torch.tensor([[0.03, -0.02, 0.01, 0.11, -0.07, 0.13]], dtype=torch.float64, requires_grad=True)
    K = torch.tensor([[[4.0, 0, 2.0], [0, 4.0, 1.5], [0, 0, 1]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s, d, p: S.inverse_warp(s, d, p, K)[0], (src, depth, pose))
    zero = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)  # Rodrigues at the identity
    assert torch.autograd.gradcheck(S.axis_angle_to_matrix, (zero,))


def test_rescale_K_under_downscale():
    K = np.array([[100.0, 0, 63.5], [0, 90.0, 31.5], [0, 0, 1]])
    X = np.array([1.3, -0.4, 7.0])
    u = K @ X / X[2]
    for s in (0.5, 0.25):
        u_small = S.rescale_K(K, s, s) @ X / X[2]
        np.testing.assert_allclose(u_small[:2], (u[:2] + 0.5) * s - 0.5)  # the same point, pixel-centre exact
    np.testing.assert_allclose(S.rescale_K(S.builtin_K(24, 80), 0.5, 0.5), S.builtin_K(12, 40), atol=1e-12)
    # Frames shrunk 2x by area averaging + the rescaled K: the GT warp still reproduces the target.
    tgt, src, _, pose, K = gt_view_pair(24, 80)
    small = S.rescale_K(K, 0.5, 0.5)
    boxes, P = street(3, 8)
    depth = B.render_view(boxes, P[4], small, 12, 40)[1]
    tgt, src = F.avg_pool2d(tgt[None], 2), F.avg_pool2d(src[None], 2)
    d = torch.where(depth > 0, depth, torch.full_like(depth, 1e4))[None, None]
    warped, valid = S.inverse_warp(src, d, pose[None].float(), torch.tensor(small, dtype=torch.float32)[None])
    m = (valid[0, 0] > 0) & (depth > 0)
    err, unwarped = (warped - tgt).abs().mean(1)[0][m], (src - tgt).abs().mean(1)[0][m]
    assert err.median() < 0.02 and err.mean() < 0.5 * unwarped.mean()


# ----------------------------------------------------------------------------------------------
# Metrics on hand-computed cases
def test_depth_metrics_hand_computed():
    m = S.depth_metrics(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]))
    assert m["abs_rel"] == pytest.approx(0.25) and m["sq_rel"] == pytest.approx(0.25)
    assert m["rmse"] == pytest.approx(np.sqrt(0.5)) and m["rmse_log"] == pytest.approx(np.log(2) / np.sqrt(2))
    assert (m["a1"], m["a2"], m["a3"]) == (0.5, 0.5, 0.5)  # max ratio 2 > 1.25^3 = 1.953
    m = S.depth_metrics(torch.tensor([1.2, 2.0]), torch.tensor([1.0, 2.0]))
    assert (m["a1"], m["a2"], m["a3"]) == (1.0, 1.0, 1.0)


def test_ate_snippet_hand_computed():
    gt = torch.tensor([[0, 0, z] for z in range(5)], dtype=torch.float64)
    assert S.ate_snippet(gt, 0.5 * gt) == pytest.approx(0)  # scale is fitted
    assert S.ate_snippet(gt, gt + 3) == pytest.approx(0)  # first frames aligned
    pred = gt.clone()
    pred[1:, 0] = 1.0  # a constant 1 m sideways drift after the first frame
    scale = 30 / 34  # sum(gt.pred) / sum(pred^2) = (1+4+9+16) / (30+4)
    err = np.sqrt(sum((scale * 1) ** 2 + (scale * z - z) ** 2 for z in range(1, 5))) / 5
    assert S.ate_snippet(gt, pred) == pytest.approx(err)


# ----------------------------------------------------------------------------------------------
# Loaders on tiny fixture folders of each layout, and their errors
def write_png(path, arr):
    import imageio.v3 as iio
    os.makedirs(os.path.dirname(path), exist_ok=True)
    iio.imwrite(path, arr)


def frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def poses_txt(path, n):
    P = np.tile(np.eye(4)[:3], (n, 1, 1))
    P[:, 2, 3] = np.arange(n)  # 1 m forward per frame
    np.savetxt(path, P.reshape(n, 12))


def generic_seq(root, name="seq_a", n=4, h=20, w=60):
    d = root / name
    for i, im in enumerate(frames(n, h, w)):
        write_png(str(d / "images" / f"{i:04d}.png"), im)
    (d / "intrinsics.txt").write_text("30 0 29.5\n0 30 9.5\n0 0 1\n")
    poses_txt(d / "poses.txt", n)
    os.makedirs(d / "depth")
    np.save(d / "depth" / "0000.npy", np.full((h, w), 5.0, np.float32))
    write_png(str(d / "depth" / "0001.png"), np.full((h, w), 7250, np.uint16))  # millimetres
    return d


def test_generic_loader(tmp_path):
    generic_seq(tmp_path)
    (s,) = S.load_sequences(str(tmp_path), (10, 30))
    assert s["images"].shape == (4, 3, 10, 30) and s["images"].dtype == torch.uint8
    np.testing.assert_allclose(s["K"], S.rescale_K([[30, 0, 29.5], [0, 30, 9.5], [0, 0, 1]], 0.5, 0.5))
    np.testing.assert_allclose(s["K"], [[15, 0, 14.5], [0, 15, 4.5], [0, 0, 1]])
    assert s["poses"].shape == (4, 4, 4) and s["poses"][3, 2, 3] == 3
    assert sorted(s["depth"]) == [0, 1] and s["depth"][1][0, 0] == pytest.approx(7.25)
    (tmp_path / "seq_a" / "intrinsics.txt").write_text("30 31 29.5 9.5\n")  # the 4-number form
    assert S.load_sequences(str(tmp_path), (20, 60))[0]["K"][1, 1] == 31


def test_kitti_raw_and_odometry_loaders(tmp_path):
    raw = tmp_path / "raw" / "2011_09_26"
    drive = raw / "2011_09_26_drive_0001_sync" / "image_02" / "data"
    for i, im in enumerate(frames(3, 20, 64)):
        write_png(str(drive / f"{i:010d}.png"), im)
    (raw / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012\nS_rect_02: 6.4e+01 2.0e+01\n"
        "P_rect_02: 7.2e+01 0 3.2e+01 4.5e+01 0 7.2e+01 1.0e+01 -3.4e-01 0 0 1 4.9e-03\n")
    seqs = S.load_sequences(str(tmp_path / "raw"), (10, 32))
    assert [s["name"] for s in seqs] == ["2011_09_26_drive_0001_sync"]
    np.testing.assert_allclose(seqs[0]["K"], S.rescale_K([[72, 0, 32], [0, 72, 10], [0, 0, 1]], 0.5, 0.5))
    gt = tmp_path / "gt.npz"
    np.savez(gt, depth=np.full((1, 20, 64), 9.0, np.float32), frames=np.array(["2011_09_26_drive_0001_sync 1"]))
    S.attach_gt_depth(seqs, str(gt))
    assert list(seqs[0]["depth"]) == [1]
    np.savez(gt, depth=np.full((1, 20, 64), 9.0, np.float32), frames=np.array(["nope 1"]))
    with pytest.raises(S.InputError, match="frame entry 'nope 1'"):
        S.attach_gt_depth(seqs, str(gt))

    odo = tmp_path / "odo"
    for i, im in enumerate(frames(5, 20, 64)):
        write_png(str(odo / "sequences" / "09" / "image_2" / f"{i:06d}.png"), im)
    (odo / "sequences" / "09" / "calib.txt").write_text("P0: " + " ".join(["1"] * 12) + "\n"
                                                        "P2: 7.2e+01 0 3.2e+01 0 0 7.2e+01 1.0e+01 0 0 0 1 0\n")
    os.makedirs(odo / "poses")
    poses_txt(odo / "poses" / "09.txt", 5)
    (s,) = S.load_sequences(str(odo), (20, 64))
    assert s["name"] == "09" and s["poses"].shape == (5, 4, 4) and s["K"][0, 2] == 32


@pytest.mark.parametrize("breakage, message", [
    ("intrinsics", "intrinsics.txt: no such file"),
    ("size", "expected the sequence's image size"),
    ("poses", "poses.txt: expected 4 lines (one per frame), found 3"),
    ("unreadable", "0002.png: cannot be read as an image"),
    ("depth", "0000.npy: expected a depth map of the image size (20, 60), found (10, 60)"),
    ("empty", "expected sequence folders"),
])
def test_loader_errors(tmp_path, breakage, message):
    d = generic_seq(tmp_path)
    if breakage == "intrinsics":
        os.remove(d / "intrinsics.txt")
    elif breakage == "size":
        write_png(str(d / "images" / "0003.png"), frames(1, 22, 60)[0])
    elif breakage == "poses":
        poses_txt(d / "poses.txt", 3)
    elif breakage == "unreadable":
        (d / "images" / "0002.png").write_bytes(b"not a png")
    elif breakage == "depth":
        np.save(d / "depth" / "0000.npy", np.ones((10, 60), np.float32))
    elif breakage == "empty":
        os.rename(d / "images", d / "frames")
    with pytest.raises(S.InputError) as e:
        S.load_sequences(str(tmp_path), (10, 30))
    assert message in str(e.value)


def test_bad_input_cli_is_one_line_exit_2(tmp_path, cache_root):
    d = generic_seq(tmp_path)
    poses_txt(d / "poses.txt", 3)
    proc = run_cli(SCRIPT, "--data", tmp_path, "--steps", 1, "--out", tmp_path / "run", *SMALL, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {d / 'poses.txt'}: expected 4 lines (one per frame), found 3"
    proc = run_cli(SCRIPT, "--eval-only", "--resume", tmp_path / "missing.pt", check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# Command line: train, resume (exactly), eval-only, predict, torchrun, bench
def read_json(path):
    with open(path) as f:
        return json.load(f)


TIMING = ("wall_seconds", "frames_per_s")


def test_cli_train_resume_eval_predict(tiny_data, tmp_path, cache_root):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli(SCRIPT, "--data", tiny_data, "--steps", 4, "--eval-every", 2, "--out", a, *SMALL)
    res = read_json(a / "results.json")
    for key in ("depth", "depth_median_scaled", "ate", "ate_std", "steps", "wall_seconds", "frames_per_s"):
        assert key in res
    assert set(res["depth"]) == {"abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"} and res["steps"] == 4
    assert [r["step"] for r in map(json.loads, open(a / "metrics.jsonl"))] == [2, 4]
    assert (a / "depth_grid.png").exists() and (a / "trajectory.png").exists()

    run_cli(SCRIPT, "--data", tiny_data, "--steps", 2, "--eval-every", 2, "--out", b, *SMALL)
    run_cli(SCRIPT, "--data", tiny_data, "--steps", 4, "--eval-every", 2, "--resume", b / "ckpt.pt", *SMALL)
    res_b = read_json(b / "results.json")
    assert {k: v for k, v in res_b.items() if k not in TIMING} == {k: v for k, v in res.items() if k not in TIMING}
    ca, cb = (torch.load(p / "ckpt.pt", weights_only=True) for p in (a, b))
    for net in ("depth_net", "pose_net", "d_depth", "d_motion"):
        for k in ca[net]:
            assert torch.equal(ca[net][k], cb[net][k]), (net, k)
    assert [r["step"] for r in map(json.loads, open(b / "metrics.jsonl"))] == [2, 4]

    c = tmp_path / "c"
    run_cli(SCRIPT, "--eval-only", "--resume", a / "ckpt.pt", "--data", tiny_data, "--out", c, "--no-progress")
    assert read_json(c / "results.json")["depth"] == res["depth"]

    p = tmp_path / "p"
    run_cli(SCRIPT, "--predict", tiny_data / "test" / "test_3" / "images", "--resume", a / "ckpt.pt", "--out", p)
    maps = sorted(os.listdir(p / "depth"))
    assert len(maps) == 16 and np.load(p / "depth" / "000000.npy").shape == (32, 96)
    assert np.loadtxt(p / "poses.txt").shape == (8, 12)


def test_cli_torchrun_two_processes(tiny_data, tmp_path, cache_root):
    out = tmp_path / "ddp"
    run_cli(SCRIPT, "--data", tiny_data, "--steps", 2, "--eval-every", 2, "--out", out, "--paired-frac", 0.5,
            *SMALL, torchrun_nproc=2)
    res = read_json(out / "results.json")
    assert res["world"] == 2 and res["steps"] == 2


def test_cli_adv_on_one_memory(tiny_data, tmp_path, cache_root):
    """--adv-on keeps one of the two memories (the ablation: which prior settles the scale)."""
    for kind, left in (("depth", "8 depth maps, 0 motions"), ("motion", "0 depth maps, 6 motions")):
        proc = run_cli(SCRIPT, "--data", tiny_data, "--steps", 1, "--eval-every", 1, "--out", tmp_path / kind,
                       "--adv-on", kind, *SMALL)
        assert left in proc.stdout + proc.stderr


def test_cli_bench(tiny_data, tmp_path, cache_root):
    run_cli(SCRIPT, "--bench", "--data", tiny_data, "--out", tmp_path, *SMALL)
    bench = read_json(tmp_path / "bench.json")
    assert bench["renderer_mpix_per_s"] > 0 and bench["train_frames_per_s"] > 0


# ----------------------------------------------------------------------------------------------
# Learning: the training signals move the metrics
@pytest.fixture
def one_thread():
    """Tiny in-process training: one thread avoids oversubscribing a busy machine's cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_signal_moves_metrics(tiny_data, one_thread):
    torch.manual_seed(0)
    d = S.common.Dist("cpu")
    args = S.get_args(["--data", str(tiny_data), "--height", "16", "--width", "48", "--batch-size", "4",
                       "--paired-frac", "1", "--lambda-rec", "0", "--lambda-adv", "0", "--lr", "1e-3"])
    train, test, _, _ = S.load_data(args, d)
    data = S.training_set(train, args, d.device)
    nets = S.DepthNet(args.min_depth, args.max_depth), S.PoseNet(), S.PatchD(), S.MotionD(torch.zeros(12), torch.ones(12))
    opts = torch.optim.Adam([*nets[0].parameters(), *nets[1].parameters()], lr=args.lr), None
    before = S.evaluate(nets[0], nets[1], train, args, d.device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        S.train_step(nets, opts, S.sample_batch(data, None, None, gen, args, d, False, False), args, d, 0)
    after = S.evaluate(nets[0], nets[1], train, args, d.device)
    assert after["depth"]["abs_rel"] < 0.7 * before["depth"]["abs_rel"]
    assert after["ate_no_scale"] < before["ate_no_scale"]
