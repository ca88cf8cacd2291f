"""The renderers and pose's training step on every device torch sees, against the same code on the CPU.

Without a GPU only the CPU runs these (the comparison is then exact and checks the tests themselves); on a
CUDA machine they check the CUDA path: `python3 -m pytest -q tests/test_device.py` (tools/device_check.sh)."""
import copy

import numpy as np
import pytest
import torch

import common
import face_aign as FA
import pose_aign as P
import sfm_aign as S

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def on(dev, *tensors):
    return [t.to(dev) if torch.is_tensor(t) else t for t in tensors]


def with_grads(fn, *inputs):
    """fn's outputs and the gradients of a fixed function of them w.r.t. the float inputs, all on the CPU."""
    leaves = [t.clone().requires_grad_(True) if torch.is_tensor(t) and t.is_floating_point() else t
              for t in inputs]
    outs = [o for o in fn(*leaves) if o.is_floating_point()]
    sum((o * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum() for o in outs).backward()
    return [o.detach().cpu() for o in outs] + [t.grad.cpu() for t in leaves
                                               if torch.is_tensor(t) and t.requires_grad]


def assert_same(got, ref, rtol=1e-4, atol=1e-5):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dev", DEVICES)
def test_pose_input_and_renderer_with_a_lens(dev):
    g = torch.Generator().manual_seed(0)
    pose = 0.3 * torch.randn(16, 17, 3, generator=g)                              # (16,17,3) metres
    xn = 0.3 * torch.rand(16, 17, 2, generator=g) - 0.15                          # (16,17,2) normalised
    vis = torch.rand(16, 17, generator=g) > 0.1
    lens = torch.tensor(P.lens_of([-0.2, 0.2, -0.01, 1e-3, -1e-3], "opencv"), dtype=torch.float32).expand(16, 9)
    cam = torch.tensor([1100.0, 1100.0, 500.0, 500.0]).expand(16, 4)

    def render(pose, xn, vis, lens):
        return P.place_and_project(pose, xn, vis, "perspective", lens)

    def lift_input(x2d, cam, lens):
        inp, _, _, scale, rot = P.normalise_2d(x2d, cam, lens, ray=True)
        return inp, scale, rot

    x2d = torch.where(vis[..., None], xn * cam[:, None, :2] + cam[:, None, 2:], float("nan"))
    assert_same(with_grads(render, *on(dev, pose, xn, vis, lens)), with_grads(render, pose, xn, vis, lens))
    assert_same([t.cpu() for t in lift_input(*on(dev, x2d, cam, lens))], list(lift_input(x2d, cam, lens)))


@pytest.mark.parametrize("dev", DEVICES)
def test_pose_training_step(dev):
    """One D and one G step from the same weights and batch: the same losses on the device as on the CPU."""
    rng = np.random.default_rng(0)
    pc = np.float32(rng.normal(0, 0.25, (40, 17, 3)) + [0, 0, 5])                  # (40,17,3) camera frame
    cam = np.tile(np.float32([1000, 1000, 500, 500]), (40, 1))
    x2d = pc[..., :2] / pc[..., 2:] * cam[:, None, :2] + cam[:, None, 2:]
    data = {"train": {"x2d": x2d, "cam": cam, "dist": None, "y3d": pc, "action": np.array(["a"] * 40)},
            "memory": pc, "memory_src": "m", "elevation": (-10, 40)}
    args = P.get_args(["--batch-size", "8", "--paired-frac", "0.25", "--hidden", "64"])
    losses = {}
    for d in ("cpu", dev):
        data["train_set"] = P.training_set(args, data, torch.device(d))
        torch.manual_seed(0)
        nets = {k: copy.deepcopy(m).to(d) for k, m in P.build_nets(args, torch.device("cpu")).items()}
        opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr, betas=(0.5, 0.999)) for k, m in nets.items()}
        batch = P.draw_batch(data, torch.Generator().manual_seed(0), args, common.Dist("cpu"))
        losses[d] = {k: float(v) for k, v in P.train_step(nets, opts, batch, args, common.Dist("cpu"), 0).items()}
    assert losses["cpu"]["loss_sup"] > 0
    assert losses[dev] == pytest.approx(losses["cpu"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("dev", DEVICES)
def test_sfm_inverse_warp(dev):
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, 12, 20, generator=g)                                   # (2,3,12,20)
    depth = 3 + 5 * torch.rand(2, 1, 12, 20, generator=g)                         # (2,1,12,20) metres
    pose6 = torch.tensor([[0.01, -0.02, 0.005, 0.05, -0.02, 0.3], [-0.01, 0.03, 0.0, -0.1, 0.01, -0.2]])
    K = torch.tensor([[16.0, 0, 10], [0, 16, 6], [0, 0, 1]]).expand(2, 3, 3)
    assert_same(with_grads(S.inverse_warp, *on(dev, src, depth, pose6, K)),
                with_grads(S.inverse_warp, src, depth, pose6, K), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dev", DEVICES)
def test_face_renderers(dev):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1                             # (3,3,32,32) in [-1, 1]
    shifts = torch.tensor([[0, 0], [2, -3], [-4, 1]])

    def both(y, shifts):
        mask = FA.box_masks(len(y), 32, "mouth", shifts)
        return FA.render_sr(y, 4), FA.render_inpaint(y, mask), mask

    assert_same(with_grads(both, *on(dev, y, shifts)), with_grads(both, y, shifts))
