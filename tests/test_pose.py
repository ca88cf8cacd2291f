"""Tests of pose_aign.py: renderer, metrics, loaders (fixtures in each real format), CLI, learning."""
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import common
import pose_aign as P
from tools import bvh_to_memory as BV
from tools import keypoints_to_npz as KP
from tools import pose_builtin as B
from common import InputError
from conftest import ROOT, one_line_error, run_cli, standalone_copy

torch.set_num_threads(1)


H36M_AT_COCO = [9, 10, 10, 10, 10, 11, 14, 12, 15, 13, 16, 4, 1, 5, 2, 6, 3]  # COCO joint k: this H36M joint's
# position (eyes, ears: the head), to write COCO-17 fixtures from H36M-17 2D


def random_poses(n, seed=0):
    """Plausible root-relative poses from the built-in generator, in a camera frame, metres."""
    rng = np.random.default_rng(seed)
    lengths = B.bone_lengths(np.load(os.path.join(ROOT, "data", "cmu_h36m17.npz"))["poses_3d"])
    world = np.concatenate([B.synth_pose_fk(B.synth_motion(k, n, rng), lengths, 30.0) for k in ("walk", "sit")])
    R, root, cam = B.random_cameras(len(world), rng)
    pc = np.einsum("nij,nkj->nki", R, world - world[:, :1]) + root[:, None]
    return pc.astype(np.float64), cam.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Renderer
def naive_place_and_project(pose, xn, vis, camera):
    """Independent reference: per-sample least squares with numpy, written from the equations."""
    out = np.zeros(xn.shape)
    for b in range(len(pose)):
        rows, rhs = [], []
        for j in np.where(vis[b])[0]:
            X, Y, Z = pose[b, j]
            z = Z if camera == "perspective" else 0.0
            # x (z + tz) = X + tx  ->  -tx + x tz = X - x z
            rows.append([-1, 0, xn[b, j, 0]]); rhs.append(X - xn[b, j, 0] * z)
            rows.append([0, -1, xn[b, j, 1]]); rhs.append(Y - xn[b, j, 1] * z)
        t = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
        for j in range(P.NJ):
            X, Y, Z = pose[b, j] + t
            depth = (pose[b, j, 2] if camera == "perspective" else 0.0) + t[2]
            out[b, j] = [(pose[b, j, 0] + t[0]) / depth, (pose[b, j, 1] + t[1]) / depth]
    return out


@pytest.mark.parametrize("camera", ["perspective", "weak"])
def test_renderer_matches_naive_implementation(camera):
    pc, cam = random_poses(4)
    rel = pc - pc[:, :1]
    rng = np.random.default_rng(1)
    xn = pc[..., :2] / pc[..., 2:] + rng.normal(0, 0.01, pc[..., :2].shape)  # observations with noise
    vis = rng.random((len(pc), P.NJ)) > 0.2
    vis[:, :4] = True
    proj, _ = P.place_and_project(torch.tensor(rel), torch.tensor(xn), torch.tensor(vis), camera)
    # (atol: the renderer adds a 1e-6 ridge so that a pose with a single visible joint stays solvable)
    np.testing.assert_allclose(proj.numpy(), naive_place_and_project(rel, xn, vis, camera), atol=2e-5)


def test_renderer_reproduces_ground_truth_projection():
    """With the true root-relative pose, the closed-form placement finds the true root and the
    rendered keypoints coincide with the observed ones (perspective camera)."""
    pc, cam = random_poses(8)
    x2d = B.project_np(pc, cam)
    inp, xn, vis, scale, _ = P.normalise_2d(torch.tensor(x2d), torch.tensor(cam))
    proj, t = P.place_and_project(torch.tensor(pc - pc[:, :1]), xn, vis)
    np.testing.assert_allclose(t.numpy(), pc[:, 0], rtol=1e-4)                   # (1e-6 ridge)
    pixels = proj.numpy() * cam[:, None, :2] + cam[:, None, 2:]                      # fx x + cx, fy y + cy
    np.testing.assert_allclose(pixels, x2d, atol=0.05)
    assert P.reprojection_loss(proj, xn, vis, scale).item() < 1e-8


def test_renderer_depth_flip_is_ambiguous_under_weak_perspective():
    """Why the prior is needed: a depth-mirrored pose renders the same (weak perspective)."""
    pc, _ = random_poses(4)
    rel = torch.tensor(pc - pc[:, :1])
    flipped = rel * torch.tensor([1.0, 1.0, -1.0])
    xn = torch.tensor(pc[..., :2] / pc[:, :1, 2:])
    vis = torch.ones(len(pc), P.NJ, dtype=torch.bool)
    a, _ = P.place_and_project(rel, xn, vis, "weak")
    b, _ = P.place_and_project(flipped, xn, vis, "weak")
    assert torch.allclose(a, b, atol=1e-9)


def test_renderer_gradcheck_float64():
    pc, _ = random_poses(2)
    rel = torch.tensor(pc[:2] - pc[:2, :1], requires_grad=True)
    xn = torch.tensor(pc[:2, :, :2] / pc[:2, :, 2:])
    vis = torch.ones(2, P.NJ, dtype=torch.bool)
    vis[0, 5] = False
    assert torch.autograd.gradcheck(lambda p: P.place_and_project(p, xn, vis)[0], (rel,))


def naive_h36m_project(p_cam, cam, dist):
    """Independent reference: Human3.6M's projection as VideoPose3D's project_to_2d defines it, one
    point at a time with scalars: (x, y) = clamp(X/Z, Y/Z) to [-1, 1]; radial 1 + k1 r2 + k2 r4 +
    k3 r6; tangential p1 x + p2 y; distorted = (x, y) (radial + tangential) + (p1, p2) r2; f * . + c."""
    out = np.zeros(p_cam.shape[:-1] + (2,))
    for n, j in np.ndindex(*p_cam.shape[:-1]):
        X, Y, Z = p_cam[n, j]
        fx, fy, cx, cy = cam[n]
        k1, k2, k3, p1, p2 = dist[n]
        x, y = min(max(X / Z, -1.0), 1.0), min(max(Y / Z, -1.0), 1.0)
        r2 = x * x + y * y
        radial, tan = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3, p1 * x + p2 * y
        out[n, j] = fx * (x * (radial + tan) + p1 * r2) + cx, fy * (y * (radial + tan) + p2 * r2) + cy
    return out


def naive_opencv_project(p_cam, cam, coeffs):
    """Independent reference: OpenCV's projectPoints with distCoeffs k1 k2 p1 p2 k3, one point at a time:
    x'' = x radial + 2 p1 x y + p2 (r2 + 2 x^2), y'' = y radial + p1 (r2 + 2 y^2) + 2 p2 x y; f * . + c."""
    out = np.zeros(p_cam.shape[:-1] + (2,))
    for n, j in np.ndindex(*p_cam.shape[:-1]):
        X, Y, Z = p_cam[n, j]
        fx, fy, cx, cy = cam[n]
        k1, k2, p1, p2, k3 = coeffs[n]
        x, y = X / Z, Y / Z
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        out[n, j] = (fx * (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)) + cx,
                     fy * (y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y) + cy)
    return out


def h36m_lens(n):
    """(n,5) distortion constants k1 k2 k3 p1 p2 of the four Human3.6M cameras, in turn."""
    return P.H36M_DISTORTION[np.arange(n) % 4]


def vp3d(coeffs):
    """VideoPose3D's k1 k2 k3 p1 p2 -> the renderer's lens tensor."""
    return torch.tensor(P.lens_of(coeffs, "videopose3d"))


def test_distortion_matches_naive_h36m_and_opencv_projections():
    pc, cam = random_poses(3)
    rng = np.random.default_rng(2)
    pc[:, :, :2] *= rng.uniform(0.5, 4.0, (len(pc), 1, 1))        # reach the image corners (and the clamp)
    xy = torch.tensor(pc[..., :2] / pc[..., 2:])
    for dist in (h36m_lens(len(pc)), rng.normal(0, 0.05, (len(pc), 5))):
        px = P.distort(xy, vp3d(dist)).numpy() * cam[:, None, :2] + cam[:, None, 2:]
        np.testing.assert_allclose(px, naive_h36m_project(pc, cam, dist), atol=1e-8)
    # OpenCV's model (dist_coeffs k1 k2 p1 p2 k3), inside the clamp: the same radial, other tangential terms
    inside = np.abs(pc[..., :2] / pc[..., 2:]).max((1, 2)) < 1
    cv = np.concatenate([rng.normal(0, 0.05, (len(pc), 2)), rng.normal(0, 0.01, (len(pc), 2)),
                         rng.normal(0, 0.05, (len(pc), 1))], 1)                   # (n,5) k1 k2 p1 p2 k3
    lens = torch.tensor(P.lens_of(cv[:, [0, 1, 4, 2, 3]], "opencv"))
    px = P.distort(xy, lens).numpy() * cam[:, None, :2] + cam[:, None, 2:]
    np.testing.assert_allclose(px[inside], naive_opencv_project(pc, cam, cv)[inside], atol=1e-8)
    reordered = P.distort(xy, vp3d(cv[:, [0, 1, 4, 2, 3]])).numpy() * cam[:, None, :2] + cam[:, None, 2:]
    assert np.abs(reordered - px)[inside].max() > 1.0             # reordering alone is another lens
    # undistort inverts both on the image (|X/Z| < 0.5 for H36M's 1000 px at f 1145)
    xy = torch.tensor(rng.uniform(-0.5, 0.5, (4, 17, 2)))
    for lens in (vp3d(h36m_lens(4)), torch.tensor(P.lens_of(cv[[0, 1, 2, 0]][:, [0, 1, 4, 2, 3]], "opencv"))):
        np.testing.assert_allclose(P.undistort(P.distort(xy, lens), lens).numpy(), xy.numpy(), atol=1e-9)


def test_renderer_with_distortion_reproduces_h36m_projection_and_gradchecks():
    """The true pose, rendered with the lens, lands on the distorted keypoints (closed-form placement
    on the undistorted observations); the renderer stays differentiable (float64 gradcheck)."""
    pc, cam = random_poses(4)
    dist = h36m_lens(len(pc))
    x2d = naive_h36m_project(pc, cam, dist)
    inp, xn, vis, _, _ = P.normalise_2d(torch.tensor(x2d), torch.tensor(cam), vp3d(dist))
    proj, t = P.place_and_project(torch.tensor(pc - pc[:, :1]), xn, vis, dist=vp3d(dist))
    np.testing.assert_allclose(t.numpy(), pc[:, 0], rtol=1e-4)
    np.testing.assert_allclose(proj.numpy() * cam[:, None, :2] + cam[:, None, 2:], x2d, atol=0.05)
    pinhole, _ = P.place_and_project(torch.tensor(pc - pc[:, :1]), xn, vis)      # the lens ignored
    assert np.abs(pinhole.numpy() * cam[:, None, :2] + cam[:, None, 2:] - x2d).max() > 1.0
    rel = torch.tensor(pc[:2] - pc[:2, :1], requires_grad=True)
    lens = vp3d(dist[:2]).requires_grad_(True)
    vis = vis[:2].clone()
    vis[0, 5] = False
    assert torch.autograd.gradcheck(lambda p, d: P.place_and_project(p, xn[:2], vis, dist=d)[0], (rel, lens))


def test_generator_output_is_root_relative_and_reprojects_at_init():
    G = P.Generator(hidden=32, blocks=1)
    pc, cam = random_poses(3)
    inp, xn, vis, scale, _ = P.normalise_2d(torch.tensor(B.project_np(pc, cam), dtype=torch.float32),
                                         torch.tensor(cam, dtype=torch.float32))
    pose = G(inp)
    assert pose.shape == (len(pc), 17, 3) and torch.all(pose[:, 0] == 0)


def test_ray_frame_virtual_camera_sees_the_person_on_its_axis():
    """--lift-frame ray: the rotation (built independently here from yaw then pitch angles, up to a roll
    about the axis) takes the pelvis ray to the optical axis; G's input is the pose as that virtual camera
    sees it, and G's pose is rotated back into the camera's frame."""
    pc, cam = random_poses(3)
    pc[:, :, 0] += 1.5  # far off the image centre
    x2d = B.project_np(pc, cam)
    inp, xn, vis, scale, rot = P.normalise_2d(torch.tensor(x2d), torch.tensor(cam), ray=True)
    rot = rot.numpy()
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    assert np.allclose(np.linalg.det(rot), 1)
    pv = pc @ rot.transpose(0, 2, 1)                                        # the camera frame -> virtual
    np.testing.assert_allclose(pv[:, 0, :2], 0, atol=1e-9)                  # the pelvis on the virtual axis
    d = inp[:, :P.NJ * 2].view(-1, P.NJ, 2).numpy() * scale.numpy()[:, None, None]
    np.testing.assert_allclose(d, pv[..., :2] / pv[..., 2:], atol=1e-9)     # the virtual camera's image
    for b in range(len(pc)):  # naive: yaw about y, then pitch about x, puts the ray on the axis too
        r = pc[b, 0] / np.linalg.norm(pc[b, 0])
        yaw, pitch = np.arctan2(r[0], r[2]), np.arcsin(r[1])
        naive = (B.euler_matrix("X", np.array([np.degrees(pitch)]))[0]
                 @ B.euler_matrix("Y", np.array([-np.degrees(yaw)]))[0])
        np.testing.assert_allclose(naive @ r, [0, 0, 1], atol=1e-9)
        roll = rot[b] @ naive.T                                             # a rotation about the axis only
        np.testing.assert_allclose(roll[2], [0, 0, 1], atol=1e-9)
    G = P.Generator(hidden=32, blocks=1).double()
    R = torch.tensor(rot)
    assert torch.allclose(G(inp, R), G(inp) @ R) and torch.all(G(inp, R)[:, 0] == 0)
    cam_inp = P.normalise_2d(torch.tensor(x2d), torch.tensor(cam))           # --lift-frame camera
    assert cam_inp[4] is None and not torch.allclose(cam_inp[0], inp)


def test_canonicalise_removes_rotation_but_keeps_mirroring():
    pc, _ = random_poses(2)
    rel = torch.tensor(pc - pc[:, :1])
    R = torch.tensor(B.euler_matrix("X", np.array([40.0]))[0] @ B.euler_matrix("Y", np.array([75.0]))[0])
    assert torch.allclose(P.canonicalise(rel), P.canonicalise(rel @ R.T), atol=1e-9)
    mirrored = rel * torch.tensor([1.0, 1.0, -1.0])
    assert (P.canonicalise(mirrored) - P.canonicalise(rel)).abs().max() > 0.05


# ---------------------------------------------------------------------------------------------
# Metrics (hand-computed cases)
def test_memory_through_cameras_and_the_tilt_feature():
    """The memory as cameras see it: an upright pose's up goes to (0, -cos e, -sin e) in the camera
    frame (y down; e > 0 looks down), for any yaw and any world up; shapes are kept (a rotation). D with
    the tilt prior tells a tilted pose from the upright one; without it, it cannot (body frame only)."""
    pc, _ = random_poses(2)
    world = (pc - pc[:, :1]) @ np.diag([1.0, -1.0, -1.0])         # camera frame -> a Y-up world (roughly)
    rng = np.random.default_rng(3)
    for up in (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]), np.array([0.6, 0.0, 0.8])):
        a = np.cross([0.0, 1.0, 0.0], up)
        ang = np.arccos(np.clip(up[1], -1, 1))
        Rw = B.rotvec_matrix(a / max(np.linalg.norm(a), 1e-12) * ang)  # takes Y up to `up`
        poses = torch.tensor(world @ Rw.T)
        poses[:, 8] = torch.tensor(np.linalg.norm(world[:, 8], axis=-1)[:, None] * up)   # thorax straight up
        yaw, el = torch.tensor(rng.uniform(0, 6.3, len(poses))), torch.tensor(rng.uniform(-0.3, 0.8, len(poses)))
        seen = P.through_cameras(poses, torch.tensor(up), yaw, el)
        u = seen[:, 8] / seen[:, 8].norm(dim=-1, keepdim=True)
        np.testing.assert_allclose(u.numpy(), torch.stack([0 * el, -el.cos(), -el.sin()], -1).numpy(), atol=1e-9)
        np.testing.assert_allclose(torch.cdist(seen, seen).numpy(), torch.cdist(poses, poses).numpy(), atol=1e-9)
    torch.manual_seed(0)
    rel = torch.tensor(pc - pc[:, :1], dtype=torch.float32)
    c, s_ = np.cos(0.5), np.sin(0.5)
    tilted = rel @ torch.tensor([[1, 0, 0], [0, c, -s_], [0, s_, c]], dtype=torch.float32).T
    for tilt in (True, False):
        D = P.Discriminator(hidden=32, tilt=tilt)
        gap = (D(rel) - D(tilted)).abs().max().item()
        assert (gap > 1e-4) if tilt else (gap < 1e-5), (tilt, gap)


def test_fitted_sampler_fits_cmu_and_keeps_joint_limits():
    """Inverse then forward kinematics reproduces the real poses (the fit sees what is there); the
    sampled clips keep the subject's bones, bend knees and elbows only their way and move smoothly."""
    cmu = np.load(os.path.join(ROOT, "data", "cmu_h36m17.npz"))
    real = cmu["poses_3d"][cmu["clip"] == "01_01"][::4].astype(np.float64)
    model = B.fit_sampler(real)
    rv = B.inverse_kinematics(real, model["rest"])
    R0 = B.kabsch(model["rest"][[1, 4, 7]], B.unit(real[:, [1, 4, 7]] - real[:, :1]))
    yaw = np.degrees(np.arctan2(R0[:, 0, 2], R0[:, 2, 2]))
    rebuilt = B.forward_kinematics(rv, model["rest"], B.bone_lengths(real), yaw)
    assert 1000 * np.linalg.norm(rebuilt - (real - real[:, :1]), axis=-1).mean() < 20
    lengths = B.bone_lengths(real) * 1.1
    clip = B.sample_clip(model, 100, lengths, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(clip[:, 1:] - clip[:, P.PARENTS[1:]], axis=-1),
                               np.broadcast_to(lengths[1:], (100, 16)), rtol=1e-9)
    assert np.linalg.norm(np.diff(clip, axis=0), axis=-1).max() < 0.15     # metres per frame at 25 fps
    thigh, shin = clip[:, 2] - clip[:, 1], clip[:, 3] - clip[:, 2]
    assert np.degrees(np.arccos((B.unit(thigh) * B.unit(shin)).sum(-1))).max() <= 150 + 1e-6


def test_wide_clips_cover_the_limb_ranges_within_joint_limits():
    """wide_clip keeps the subject's bones, bends knees and elbows only their way, moves smoothly,
    reaches overhead, and in a bilateral clip moves the right limbs like the left ones (mirrored)."""
    cmu = np.load(os.path.join(ROOT, "data", "cmu_h36m17.npz"))
    real = cmu["poses_3d"][cmu["clip"] == "01_01"][::4].astype(np.float64)
    model, lengths = B.fit_sampler(real), B.bone_lengths(real)
    clips = [B.wide_clip(model, 250, lengths, np.random.default_rng(s)) for s in range(8)]
    for clip in clips:
        np.testing.assert_allclose(np.linalg.norm(clip[:, 1:] - clip[:, P.PARENTS[1:]], axis=-1),
                                   np.broadcast_to(lengths[1:], (250, 16)), rtol=1e-9)
        assert np.linalg.norm(np.diff(clip, axis=0), axis=-1).max() < 0.15           # metres per frame
        for a, b, c in ((1, 2, 3), (4, 5, 6), (11, 12, 13), (14, 15, 16)):
            u, v = B.unit(clip[:, b] - clip[:, a]), B.unit(clip[:, c] - clip[:, b])
            assert np.degrees(np.arccos(np.clip((u * v).sum(-1), -1, 1))).max() <= 150 + 1e-6
    poses = np.concatenate(clips)
    assert (np.maximum(poses[:, 13, 1], poses[:, 16, 1]) > poses[:, 10, 1]).mean() > 0.1  # wrist over head
    B.BILATERAL, saved = 1.0, B.BILATERAL
    try:
        clip = B.wide_clip(model, 250, lengths, np.random.default_rng(0))
    finally:
        B.BILATERAL = saved
    # in the body frame (x = right -> left hip), mirroring the right arm's direction gives the left one's
    c = P.canonicalise(torch.as_tensor(clip)).numpy()
    left, right = B.unit(c[:, 12] - c[:, 11]), B.unit(c[:, 15] - c[:, 14]) * np.array([-1, 1, 1])
    assert np.degrees(np.arccos(np.clip((left * right).sum(-1), -1, 1))).mean() < 40


# sha256 over every array of build(seed=5, overhead=0): no extra clips, from the builder before --overhead existed
DEFAULT_BUILD_SHA256 = "0eb2cf98d4e585d2bd96225ac0a07d9fb43a055b8c48385b7dfd3f93e8c92703"


def test_builtin_extra_clips_come_after_and_leave_the_default_build_byte_identical(tmp_path):
    B.build(str(tmp_path / "a"), seed=5, overhead=0)
    B.build(str(tmp_path / "b"), seed=5, wide=1, hang=1, overhead=1)
    digest = hashlib.sha256()
    for role in ("train", "val", "test", "memory"):
        z = np.load(tmp_path / "a" / f"{role}.npz")
        for k in sorted(z.files):
            digest.update(k.encode())
            digest.update(np.ascontiguousarray(z[k]).tobytes())
    assert digest.hexdigest() == DEFAULT_BUILD_SHA256
    for role in ("val", "test"):
        a, b = np.load(tmp_path / "a" / f"{role}.npz"), np.load(tmp_path / "b" / f"{role}.npz")
        n = len(a["poses_2d"])
        np.testing.assert_array_equal(b["poses_2d"][:n], a["poses_2d"])
        assert list(dict.fromkeys(b["action"][n:])) == ["wide", "hang", "overhead"]
    assert len(np.load(tmp_path / "b" / "memory.npz")["poses_3d"]) == len(
        np.load(tmp_path / "a" / "memory.npz")["poses_3d"]) + 3 * 3 * 250


def test_overhead_clips_raise_the_arms_within_joint_limits():
    """overhead_clip: a wrist above the head in most frames, the subject's bones kept, knees and elbows bent
    their way at most 150 deg (elbows 0-120), smooth motion."""
    cmu = np.load(os.path.join(ROOT, "data", "cmu_h36m17.npz"))
    real = cmu["poses_3d"][cmu["clip"] == "01_01"][::4].astype(np.float64)
    model, lengths = B.fit_sampler(real), B.bone_lengths(real)
    for seed in range(4):
        clip = B.overhead_clip(model, 250, lengths, np.random.default_rng(seed))     # (250,17,3), Y up
        np.testing.assert_allclose(np.linalg.norm(clip[:, 1:] - clip[:, P.PARENTS[1:]], axis=-1),
                                   np.broadcast_to(lengths[1:], (250, 16)), rtol=1e-9)
        assert (np.maximum(clip[:, 13, 1], clip[:, 16, 1]) > clip[:, 10, 1]).mean() > 0.7
        assert np.linalg.norm(np.diff(clip, axis=0), axis=-1).max() < 0.15
        for a, b, c, top in ((1, 2, 3, 150), (4, 5, 6, 150), (11, 12, 13, 120), (14, 15, 16, 120)):
            u, v = B.unit(clip[:, b] - clip[:, a]), B.unit(clip[:, c] - clip[:, b])
            assert np.degrees(np.arccos(np.clip((u * v).sum(-1), -1, 1))).max() <= top + 1e-6


def test_hang_motion_holds_both_arms_overhead_within_joint_limits():
    """The scripted 'hang' clips: both wrists above the head in nearly every frame, the subject's bones
    kept, knees and elbows bent at most 150 deg, smooth motion."""
    lengths = B.bone_lengths(np.load(os.path.join(ROOT, "data", "cmu_h36m17.npz"))["poses_3d"])
    for seed in range(6):
        rng = np.random.default_rng(seed)
        clip = B.synth_pose_fk(B.synth_motion("hang", 250, rng), lengths, 30.0)       # (250,17,3), Y up
        np.testing.assert_allclose(np.linalg.norm(clip[:, 1:] - clip[:, P.PARENTS[1:]], axis=-1),
                                   np.broadcast_to(lengths[1:], (250, 16)), rtol=1e-9)
        assert (np.minimum(clip[:, 13, 1], clip[:, 16, 1]) > clip[:, 10, 1]).mean() > 0.9
        assert np.linalg.norm(np.diff(clip, axis=0), axis=-1).max() < 0.15
        for a, b, c in ((1, 2, 3), (4, 5, 6), (11, 12, 13), (14, 15, 16)):
            u, v = B.unit(clip[:, b] - clip[:, a]), B.unit(clip[:, c] - clip[:, b])
            assert np.degrees(np.arccos(np.clip((u * v).sum(-1), -1, 1))).max() <= 150 + 1e-6


def test_validation_readout_tool_hand_cases():
    """tools/pose_val.py's columns: the CMU frames, the default actions' frames (a frame mean) and each new
    kind apart; a pose moved only on the 'hang' frames leaves CMU and synthetic at 0."""
    from tools import pose_val as PV
    gt, _ = random_poses(3)                                                       # 6 poses: walk x3, sit x3
    gt = torch.as_tensor(gt - gt[:, :1])
    action = np.array(["cmu", "walk", "walk", "hang", "fitted", "cmu"])
    pred = gt.clone()
    pred[3, 13] += torch.tensor([0.3, 0.0, 0.0], dtype=gt.dtype)                  # a wrist 30 cm off
    cols = PV.columns(pred, gt, action)
    assert cols["CMU stretch"] < 1e-6 and cols["synthetic (default actions)"] < 1e-6
    assert cols["new kind: hang"] > 5 and set(cols) == {"CMU stretch", "synthetic (default actions)",
                                                         "all MPJPE", "all P-MPJPE", "new kind: hang"}
    np.testing.assert_allclose(cols["all P-MPJPE"], cols["new kind: hang"] / 6, rtol=1e-6)
    np.testing.assert_allclose(cols["all MPJPE"], 300 / 17 / 6, rtol=1e-6)      # 0.3 m on 1 of 17 joints
    pred = gt.clone()
    pred[1, 16] += torch.tensor([0.0, 0.2, 0.0], dtype=gt.dtype)                  # one walk frame wrong
    cols = PV.columns(pred, gt, action)
    walk = float(P.p_mpjpe(pred[1:2], gt[1:2])[0])
    np.testing.assert_allclose(cols["synthetic (default actions)"], walk / 3, rtol=1e-6)   # 3 default frames
    assert cols["CMU stretch"] < 1e-6 and "new kind: hang" in cols


def test_error_decomposition_tool_hand_cases():
    """tools/pose_errors.py: a pose tilted by 10 deg about the camera x-axis is fixed by the tilt alone
    (10 deg found, yaw and roll 0); a pose 0.9x too small by the scale alone (N-MPJPE 0, size 0.9)."""
    from tools import pose_errors as PE
    gt, _ = random_poses(4)
    gt = torch.as_tensor(gt - gt[:, :1])
    t = torch.full((len(gt),), np.radians(10.0), dtype=torch.float64)
    cols = PE.decompose(gt @ PE.axis_rotation(0, -t).transpose(1, 2), gt)
    np.testing.assert_allclose(np.degrees(cols["tilt"]), 10.0, atol=1e-6)
    np.testing.assert_allclose(np.degrees(cols["yaw"]) + np.degrees(cols["roll"]), 0.0, atol=1e-6)
    assert cols["tilt only"].max() < 1e-6 and cols["yaw only"].min() > 1 and cols["R"].max() < 1e-6
    cols = PE.decompose(0.9 * gt, gt)
    assert cols["N-MPJPE"].max() < 1e-6 and cols["MPJPE"].min() > 1 and cols["P-MPJPE"].max() < 1e-3
    np.testing.assert_allclose(cols["size"], 0.9)
    # the oracle columns: the true bones as the 'memory' size: ideal rotation + that size recovers the pose
    bones = (gt[0, 1:] - gt[0, P.PARENTS[1:]]).norm(dim=-1)                      # one body: all frames alike
    cols = PE.decompose(0.9 * gt @ PE.axis_rotation(0, -t).transpose(1, 2), gt, bones)
    assert cols["R bones"].max() < 1e-6 and cols["truth bones"].max() < 1e-6 and cols["bones"].min() > 1
    cols = PE.decompose(gt, gt, 1.1 * bones)                                       # a memory 10% too big
    np.testing.assert_allclose(cols["truth bones"], cols["R bones"], atol=1e-9)
    assert cols["truth bones"].min() > 1
    # the lean-vs-image-position line: an elevation error of exactly -phi reads slope -1, intercept 0
    pc, _ = random_poses(20)
    phi = np.arctan2(pc[:, 0, 1], pc[:, 0, 2])
    split = {"y3d": pc, "action": np.array(["walk"] * len(pc))}
    line = PE.off_axis(split, {"elevation": -phi})
    assert "slope -1.00 deg/deg, intercept +0.00 deg" in line or "slope -1.00 deg/deg, intercept -0.00 deg" in line
    # --joints: a hand-built pose, thighs straight down (0 deg), upper arms out sideways (90 deg); the
    # prediction moves only the right wrist by 10 cm along the forearm: by far that joint's error (P-MPJPE's
    # alignment spreads some of it), the angles unchanged
    q = torch.zeros(1, P.NJ, 3, dtype=torch.float64)
    for j, xyz in {1: (-.1, 0, 0), 2: (-.1, -.45, 0), 3: (-.1, -.9, 0), 4: (.1, 0, 0), 5: (.1, -.45, 0),
                   6: (.1, -.9, 0), 7: (0, .25, 0), 8: (0, .5, 0), 9: (0, .6, .05), 10: (0, .7, 0),
                   11: (.2, .5, 0), 12: (.5, .5, 0), 13: (.8, .5, .1), 14: (-.2, .5, 0), 15: (-.5, .5, 0),
                   16: (-.8, .5, .1)}.items():
        q[0, j] = torch.tensor(xyz, dtype=torch.float64)
    pred = q.clone()
    pred[0, 16, 0] -= 0.1
    row = PE.joint_table(pred, q, np.array(["walk"]))[2].split(" | ")
    err = [float(v) for v in row[1:18]]
    assert err[16] > 60 and max(err[:16]) < 20
    assert row[18] == "0 / 0" and row[19].rstrip(" |") == "90 / 90"


def test_builtin_roles_are_disjoint(tmp_path):
    B.build(str(tmp_path), seed=5)
    z = {r: np.load(tmp_path / f"{r}.npz") for r in ("train", "val", "test")}
    subjects = {r: set(z[r]["subject"]) for r in z}
    assert not (subjects["train"] & subjects["val"]) and not (subjects["train"] & subjects["test"])
    assert subjects["val"] & subjects["test"] == {"CMU01"} and "CMU01" not in subjects["train"]
    rel = {r: z[r]["poses_3d"][z[r]["action"] == "cmu"] for r in ("val", "test")}
    rel = {r: np.round(v - v[:, :1], 4) for r, v in rel.items()}
    assert len(rel["val"]) and len(rel["test"])
    d = np.linalg.norm(rel["val"][:, None, ::4] - rel["test"][None, :, ::4], axis=-1).mean(-1)
    assert d.min() > 1e-3                                               # no CMU frame in both stretches
    assert {"fitted", "lying"} <= set(z["train"]["action"])


def test_mpjpe_hand_case():
    gt = torch.zeros(1, 17, 3)
    pred = gt.clone()
    pred[0, 3] = torch.tensor([0.003, 0.004, 0.0])  # 5 mm on one joint of 17
    assert P.mpjpe(pred, gt).item() == pytest.approx(5 / 17, rel=1e-5)


def test_p_mpjpe_removes_similarity_but_not_reflection():
    pc, _ = random_poses(3)
    gt = torch.tensor(pc - pc[:, :1])
    R = torch.tensor(B.euler_matrix("Z", np.array([33.0]))[0] @ B.euler_matrix("Y", np.array([-70.0]))[0])
    pred = 1.3 * gt @ R.T + torch.tensor([0.2, -0.1, 0.5])
    assert P.p_mpjpe(pred, gt).max().item() < 1e-6
    assert P.mpjpe(pred, gt).min().item() > 50
    mirrored = gt * torch.tensor([1.0, 1.0, -1.0])  # a depth flip: only a reflection would undo it
    assert P.p_mpjpe(mirrored, gt).min().item() > 10


def test_p_mpjpe_hand_case_two_points():
    """Two joints at distance 2 vs a prediction at distance 1, rotated 90 degrees: the optimal
    similarity maps it exactly, so P-MPJPE is 0; N-MPJPE leaves the rotation and rescales."""
    gt = torch.zeros(1, 17, 3)
    gt[0, 1] = torch.tensor([2.0, 0, 0])
    pred = torch.zeros(1, 17, 3)
    pred[0, 1] = torch.tensor([0, 1.0, 0])
    assert P.p_mpjpe(pred, gt).item() == pytest.approx(0, abs=1e-4)
    # n-mpjpe: scale s = <p,g>/<p,p> = 0 -> all joints at 0 -> error 2000 mm on one joint / 17
    assert P.n_mpjpe(pred, gt).item() == pytest.approx(2000 / 17, rel=1e-5)


def test_n_mpjpe_removes_scale_only():
    pc, _ = random_poses(2)
    gt = torch.tensor(pc - pc[:, :1])
    assert P.n_mpjpe(0.7 * gt, gt).max().item() < 1e-6
    assert P.mpjpe(0.7 * gt, gt).min().item() > 50


# ---------------------------------------------------------------------------------------------
# Loaders: tiny fixtures in each real format
CMU_NAMES = ["Hips", "LeftUpLeg", "LeftLeg", "LeftFoot", "RightUpLeg", "RightLeg", "RightFoot", "Spine",
             "Spine1", "Neck1", "Head", "LeftArm", "LeftForeArm", "LeftHand", "RightArm", "RightForeArm",
             "RightHand"]


def write_bvh(path, frames, names=CMU_NAMES, header_frames=None):
    """A small CMU-style BVH: legs hang down, spine goes up, arms go sideways."""
    tree = {"LeftUpLeg": ("Hips", (1, -1, 0)), "LeftLeg": ("LeftUpLeg", (0, -5, 0)), "LeftFoot": ("LeftLeg", (0, -5, 0)),
            "RightUpLeg": ("Hips", (-1, -1, 0)), "RightLeg": ("RightUpLeg", (0, -5, 0)), "RightFoot": ("RightLeg", (0, -5, 0)),
            "Spine": ("Hips", (0, 2, 0)), "Spine1": ("Spine", (0, 2, 0)), "Neck1": ("Spine1", (0, 2, 0)),
            "Head": ("Neck1", (0, 1, 0)), "LeftArm": ("Spine1", (2, 1, 0)), "LeftForeArm": ("LeftArm", (3, 0, 0)),
            "LeftHand": ("LeftForeArm", (3, 0, 0)), "RightArm": ("Spine1", (-2, 1, 0)),
            "RightForeArm": ("RightArm", (-3, 0, 0)), "RightHand": ("RightForeArm", (-3, 0, 0))}
    kids = {n: [c for c in names if c in tree and tree[c][0] == n] for n in names}
    lines = ["HIERARCHY"]

    def emit(name, depth):
        pad = "  " * depth
        if name == "Hips":
            lines.extend([f"{pad}ROOT Hips", f"{pad}{{", f"{pad}  OFFSET 0 0 0",
                          f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation"])
        else:
            o = tree[name][1]
            lines.extend([f"{pad}JOINT {name}", f"{pad}{{", f"{pad}  OFFSET {o[0]} {o[1]} {o[2]}",
                          f"{pad}  CHANNELS 3 Zrotation Yrotation Xrotation"])
        for c in kids[name]:
            emit(c, depth + 1)
        if not kids[name]:
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET 0 1 0", f"{pad}  }}"])
        lines.append(f"{pad}}}")

    emit("Hips", 0)
    n_ch = 6 + 3 * (len(names) - 1)
    lines += ["MOTION", f"Frames: {header_frames or len(frames)}", "Frame Time: 0.0083333"]
    for f in frames:
        row = np.zeros(n_ch)
        row[:len(f)] = f
        lines.append(" ".join(f"{v:g}" for v in row))
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def test_bvh_reader_forward_kinematics(tmp_path):
    path = tmp_path / "a.bvh"
    # frame 0: rest; frame 1: root translated by (10, 0, 0) and rotated 90 degrees about Z
    write_bvh(path, [[0, 20, 0, 0, 0, 0], [10, 20, 0, 90, 0, 0]], header_frames=3)  # header off by one
    poses = BV.bvh_to_h36m(str(path))
    u = BV.CMU_UNIT_M
    assert poses.shape == (2, 17, 3)  # the frame count comes from the data, not the header (a note says so)
    np.testing.assert_allclose(poses[0, 0], np.array([0, 20, 0]) * u, atol=1e-6)
    np.testing.assert_allclose(poses[0, 3], np.array([-1, 9, 0]) * u, atol=1e-6)  # right ankle
    np.testing.assert_allclose(poses[0, 6], np.array([1, 9, 0]) * u, atol=1e-6)   # left ankle
    np.testing.assert_allclose(poses[0, 8], np.array([0, 26, 0]) * u, atol=1e-6)  # thorax = Neck1
    np.testing.assert_allclose(poses[0, 10], np.array([0, 28, 0]) * u, atol=1e-6)  # head = Head's end site
    # rotating the root 90 degrees about Z maps the spine (0, +4) onto (-4, 0); the root moved to x = 10
    np.testing.assert_allclose(poses[1, 0], np.array([10, 20, 0]) * u, atol=1e-6)
    np.testing.assert_allclose(poses[1, 7] - poses[1, 0], np.array([-4, 0, 0]) * u, atol=1e-6)


def test_bvh_position_channels_units_and_up_axis(tmp_path, capsys):
    """Position channels on every joint (MotionBuilder's style: they hold the local position, in place of the
    OFFSET) give the same skeleton as offsets alone; a file in other units is an error naming --unit-m; --up z
    reads a Z-up export as the Y-up one."""
    write_bvh(tmp_path / "ref.bvh", [[0, 20, 0, 30, 10, 0]])
    ref = BV.bvh_to_h36m(str(tmp_path / "ref.bvh"))
    text = (tmp_path / "ref.bvh").read_text().splitlines()
    out, rows = [], []
    for i, ln in enumerate(text):  # every JOINT gets Xposition Yposition Zposition holding its OFFSET
        if ln.strip().startswith("CHANNELS 3"):
            off = text[i - 1].split()[1:]
            rows.append(off)
            ln = ln.replace("CHANNELS 3", "CHANNELS 6 Xposition Yposition Zposition")
        out.append(ln)
    motion = out.index("MOTION")
    root = out[motion + 3].split()
    out[motion + 3] = " ".join(root[:6] + [v for off in rows for v in off + ["0", "0", "0"]])
    (tmp_path / "pos.bvh").write_text("\n".join(out) + "\n")
    np.testing.assert_allclose(BV.bvh_to_h36m(str(tmp_path / "pos.bvh")), ref, atol=1e-6)
    with pytest.raises(InputError, match=r"ankle-to-head bones sum to .* at --unit-m 1; expected a person's"):
        BV.bvh_to_h36m(str(tmp_path / "ref.bvh"), unit_m=1.0)                     # CMU units read as metres
    assert "the head is never above the feet along Y" not in capsys.readouterr().out
    zup = BV.bvh_to_h36m(str(tmp_path / "ref.bvh"), up="z")                      # the same file as if Z were up
    assert "never above the feet along Y" in capsys.readouterr().out
    np.testing.assert_allclose(zup[..., [0, 2, 1]] * [1, -1, 1], ref, atol=1e-6)


def test_bvh_without_needed_joints_is_a_clear_error(tmp_path):
    path = tmp_path / "b.bvh"
    write_bvh(path, [[0] * 6], names=[n for n in CMU_NAMES if n != "LeftHand"])
    with pytest.raises(InputError, match="lacks joints.*LeftHand"):
        BV.bvh_to_h36m(str(path))
    broken = tmp_path / "broken.bvh"
    broken.write_text("HIERARCHY\nROOT Hips\n{\n OFFSET 0 0\n}\n}\nMOTION\nFrames: 0\nFrame Time: 0.01\n")
    with pytest.raises(InputError, match="malformed HIERARCHY"):
        BV.read_bvh(str(broken))
    write_bvh(tmp_path / "no_frames.bvh", [])
    with pytest.raises(InputError, match="MOTION holds no frames"):
        BV.read_bvh(str(tmp_path / "no_frames.bvh"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .bvh files"):
        BV.bvh_files([str(tmp_path / "empty")])


def renamed_bvh(src, dst, names):
    """A copy of a BVH file with its ROOT/JOINT names replaced by names[old] (names may hold spaces)."""
    out = [re.sub(r"^(\s*(?:ROOT|JOINT) )(\S+)$", lambda m: m.group(1) + names.get(m.group(2), m.group(2)), ln)
           for ln in src.read_text().splitlines()]
    dst.write_text("\n".join(out) + "\n")
    return dst


SKELETONS = {  # other exporters' names for the fixture's CMU joints (not listed: kept as they are)
    "mixamo": {n: "mixamorig:" + n for n in CMU_NAMES},
    "smpl": {"Hips": "Pelvis", "LeftUpLeg": "L_Hip", "LeftLeg": "L_Knee", "LeftFoot": "L_Ankle", "RightUpLeg": "R_Hip",
             "RightLeg": "R_Knee", "RightFoot": "R_Ankle", "Spine": "Spine1", "Spine1": "Spine2", "Neck1": "Neck",
             "LeftArm": "L_Shoulder", "LeftForeArm": "L_Elbow", "LeftHand": "L_Wrist", "RightArm": "R_Shoulder",
             "RightForeArm": "R_Elbow", "RightHand": "R_Wrist"},
    "biped": {**{n: "Bip01 " + n for n in ["Spine", "Spine1", "Head"]}, "Hips": "Bip01 Pelvis", "Neck1": "Bip01 Neck",
              "LeftUpLeg": "Bip01 L Thigh", "LeftLeg": "Bip01 L Calf", "LeftFoot": "Bip01 L Foot",
              "RightUpLeg": "Bip01 R Thigh", "RightLeg": "Bip01 R Calf", "RightFoot": "Bip01 R Foot",
              "LeftArm": "Bip01 L UpperArm", "LeftForeArm": "Bip01 L Forearm", "LeftHand": "Bip01 L Hand",
              "RightArm": "Bip01 R UpperArm", "RightForeArm": "Bip01 R Forearm", "RightHand": "Bip01 R Hand"},
    "bandai": {"LeftUpLeg": "UpperLeg_L", "LeftLeg": "LowerLeg_L", "LeftFoot": "Foot_L", "RightUpLeg": "UpperLeg_R",
               "RightLeg": "LowerLeg_R", "RightFoot": "Foot_R", "LeftArm": "UpperArm_L", "LeftForeArm": "LowerArm_L",
               "LeftHand": "Hand_L", "RightArm": "UpperArm_R", "RightForeArm": "LowerArm_R", "RightHand": "Hand_R",
               "Neck1": "Neck"}}


@pytest.mark.parametrize("skeleton", sorted(SKELETONS))
def test_bvh_other_skeletons_map_by_name(tmp_path, skeleton, capsys):
    """Mixamo, SMPL-export, 3ds Max Biped (names with spaces) and Bandai-style names give the joints CMU's names
    give; only the spine is placed by rule: halfway along pelvis -> thorax (fixture: Hips 20, Spine 22, Spine1 24,
    Neck1 26 units up: the spine at 23)."""
    frames = [[0, 20, 0, 0, 0, 0], [10, 20, 0, 90, 0, 0]]
    write_bvh(tmp_path / "cmu.bvh", frames)
    ref = BV.bvh_to_h36m(str(tmp_path / "cmu.bvh"))
    other = renamed_bvh(tmp_path / "cmu.bvh", tmp_path / f"{skeleton}.bvh", SKELETONS[skeleton])
    poses = BV.bvh_to_h36m(str(other), seen=set())
    assert "joints by name" in capsys.readouterr().out                            # the mapping is printed
    keep = [k for k in range(17) if k != 7]
    np.testing.assert_allclose(poses[:, keep], ref[:, keep], atol=1e-6)
    np.testing.assert_allclose(poses[0, 7], np.array([0, 23, 0]) * BV.CMU_UNIT_M, atol=1e-6)
    np.testing.assert_allclose(poses[1, 7] - poses[1, 0], np.array([-3, 0, 0]) * BV.CMU_UNIT_M, atol=1e-6)
    head, motion = other.read_text().split("MOTION")                             # the HIERARCHY on one line
    (tmp_path / "one.bvh").write_text(" ".join(head.split()) + "\nMOTION" + motion)
    np.testing.assert_allclose(BV.bvh_to_h36m(str(tmp_path / "one.bvh")), poses)


def test_bvh_joint_names_prefer_the_joint_to_the_segment():
    """A LeftAnkle above a LeftFoot is the ankle, a LeftWrist above a LeftHand the wrist, a LeftShoulder below a
    LeftCollar the shoulder; the thorax is the Neck, the spine halfway from the Hips to it."""
    tree = {"LeftHip": "Hips", "LeftKnee": "LeftHip", "LeftAnkle": "LeftKnee", "LeftFoot": "LeftAnkle", "Spine": "Hips",
            "Chest": "Spine", "Neck": "Chest", "Head": "Neck", "Head_end": "Head", "LeftCollar": "Chest",
            "LeftShoulder": "LeftCollar", "LeftElbow": "LeftShoulder", "LeftWrist": "LeftElbow", "LeftHand": "LeftWrist"}
    tree.update({k.replace("Left", "Right"): v.replace("Left", "Right") for k, v in tree.items() if "Left" in k})
    names = ["Hips"] + list(tree)
    parents = [-1] + [names.index(tree[n]) for n in names[1:]]
    recipes, how = BV.skeleton_map(names, parents, np.ones((len(names), 3)), "x.bvh")
    assert [names[i] for i, _, _ in recipes[:7]] == ["Hips", "RightHip", "RightKnee", "RightAnkle", "LeftHip",
                                                      "LeftKnee", "LeftAnkle"]
    assert [names[i] for i, _, _ in recipes[8:]] == ["Neck", "Head", "Head_end", "LeftShoulder", "LeftElbow",
                                                      "LeftWrist", "RightShoulder", "RightElbow", "RightWrist"]
    i, j, w = recipes[7]                                                          # Hips-Spine-Chest-Neck, equal bones
    assert (names[i], names[j], w) == ("Spine", "Chest", pytest.approx(0.5))


def test_bvh_joint_map_names_what_the_names_do_not_tell(tmp_path):
    """A skeleton of made-up names is an error listing its joints until --joint-map names them; a map that is
    not JOINT=NAME, or names a joint the file lacks, is an error; a knee above its hip is an error."""
    write_bvh(tmp_path / "cmu.bvh", [[0, 20, 0, 0, 0, 0]])
    ref = BV.bvh_to_h36m(str(tmp_path / "cmu.bvh"))
    odd = {n: f"j{i}" for i, n in enumerate(CMU_NAMES)}
    renamed_bvh(tmp_path / "cmu.bvh", tmp_path / "odd.bvh", odd)
    one_line_error(run_cli("tools/bvh_to_memory.py", tmp_path / "odd.bvh", "--out", tmp_path / "m.npz", check=False),
                   "odd.bvh", "lacks joints for", "r_hip", "--joint-map", "j16")
    jm = {"pelvis": "Hips", "r_hip": "RightUpLeg", "r_knee": "RightLeg", "r_ankle": "RightFoot", "l_hip": "LeftUpLeg",
          "l_knee": "LeftLeg", "l_ankle": "LeftFoot", "spine": "Spine1", "thorax": "Neck1", "neck_nose": "Head",
          "l_shoulder": "LeftArm", "l_elbow": "LeftForeArm", "l_wrist": "LeftHand", "r_shoulder": "RightArm",
          "r_elbow": "RightForeArm", "r_wrist": "RightHand"}
    pairs = [f"{j}={odd[n]}" for j, n in jm.items()] + [f"head={odd['Head']}_end"]
    run_cli("tools/bvh_to_memory.py", tmp_path / "odd.bvh", "--out", tmp_path / "m.npz", "--stride", "1",
            "--joint-map", *pairs)
    np.testing.assert_allclose(np.load(tmp_path / "m.npz")["poses_3d"], ref, atol=1e-6)
    for bad, needle in [(["head"], "expected JOINT=NAME"), (["head=nope"], "a joint of this file"),
                        (["chin=j9"], "an H36M-17 joint")]:
        one_line_error(run_cli("tools/bvh_to_memory.py", tmp_path / "odd.bvh", "--out", tmp_path / "m.npz",
                               "--joint-map", *bad, check=False), needle)
    swapped = renamed_bvh(tmp_path / "cmu.bvh", tmp_path / "swapped.bvh", {"LeftLeg": "LeftFoot", "LeftFoot": "LeftLeg"})
    with pytest.raises(InputError, match="l_ankle = LeftFoot does not hang below l_knee = LeftLeg"):
        BV.bvh_to_h36m(str(swapped))


def test_bvh_to_memory_cli_writes_a_memory_the_script_reads(tmp_path):
    (tmp_path / "bvh").mkdir()
    write_bvh(tmp_path / "bvh" / "a.bvh", [[0, 20, 0, 0, 0, 0], [10, 20, 0, 90, 0, 0]])
    write_bvh(tmp_path / "bvh" / "b.bvh", [[0, 20, 0, 0, 0, 0]])
    run_cli("tools/bvh_to_memory.py", tmp_path / "bvh", "--out", tmp_path / "mem.npz", "--stride", "1")
    mem = P.load_memory(str(tmp_path / "mem.npz"))
    assert mem.shape == (3, 17, 3)
    np.testing.assert_allclose(mem[:2], BV.bvh_to_h36m(str(tmp_path / "bvh" / "a.bvh")))
    assert np.load(tmp_path / "mem.npz")["clip"].tolist() == ["a", "a", "b"]
    write_bvh(tmp_path / "bvh" / "c.bvh", [[0] * 6], names=[n for n in CMU_NAMES if n != "Head"])
    one_line_error(run_cli("tools/bvh_to_memory.py", tmp_path / "bvh", "--out", tmp_path / "m2.npz", check=False),
                   "c.bvh", "lacks joints")


def test_videopose3d_custom_videos_convert_to_an_npz_the_script_lifts_and_trains_on(tmp_path):
    """tools/videopose3d_to_npz.py: VideoPose3D's data_2d_custom_*.npz (its Detectron2 in-the-wild 2D,
    pickled dicts) -> a generic npz in COCO order, a camera per video from its size; --predict lifts it,
    a run trains on it with a memory (no 3D: no metrics); a broken file is one clear error."""
    d = write_generic_npz(tmp_path / "h36m.npz", n=36)
    coco = d["poses_2d"][:, H36M_AT_COCO]                                        # (N,17,2) COCO-17
    pos = {"clip_b": {"custom": [coco[:10]]}, "clip_a": {"custom": [coco[10:]]}}
    meta = {"layout_name": "coco", "num_joints": 17, "keypoints_symmetry": [[1, 3], [2, 4]],
            "video_metadata": {"clip_a": {"w": 1920, "h": 1080}, "clip_b": {"w": 1000, "h": 1000}}}
    np.savez(tmp_path / "custom.npz", positions_2d=pos, metadata=meta)
    run_cli("tools/videopose3d_to_npz.py", tmp_path / "custom.npz", "--out", tmp_path / "mine.npz")
    z = np.load(tmp_path / "mine.npz")                                           # plain arrays only
    assert z["subject"].tolist() == ["clip_a"] * (len(coco) - 10) + ["clip_b"] * 10 and str(z["layout"]) == "coco"
    np.testing.assert_array_equal(z["poses_2d"], np.concatenate([coco[10:], coco[:10]]))
    np.testing.assert_array_equal(z["camera"][[0, -1]], [[1920, 1920, 960, 540], [1000, 1000, 500, 500]])
    x2d = P.load_keypoints(str(tmp_path / "mine.npz"), None)["x2d"]             # H36M-17 again
    single = [1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 14, 15, 16]
    np.testing.assert_allclose(x2d[:, single], np.concatenate([d["poses_2d"][10:], d["poses_2d"][:10]])[:, single])
    write_mem(tmp_path / "mem.npz")
    out = tmp_path / "run"
    run_cli("pose_aign.py", *TINY, "--batch-size", "8", "--steps", "2", "--data", tmp_path / "mine.npz",
            "--memory", tmp_path / "mem.npz", "--out", out)
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 2 and "mpjpe" not in res
    run_cli("pose_aign.py", "--predict", tmp_path / "mine.npz", "--resume", out / "ckpt.pt", "--device", "cpu",
            "--out", tmp_path / "pred")
    pred = np.load(tmp_path / "pred" / "predictions.npz")
    assert pred["poses_3d"].shape == (len(coco), 17, 3) and pred["clip"].tolist() == z["subject"].tolist()
    del meta["video_metadata"]["clip_b"]
    np.savez(tmp_path / "custom.npz", positions_2d=pos, metadata=meta)
    one_line_error(run_cli("tools/videopose3d_to_npz.py", tmp_path / "custom.npz", "--out", tmp_path / "x.npz",
                           check=False), "custom.npz", "video 'clip_b'", "video_metadata")


def test_openpose_and_coco_results_to_npz(tmp_path):
    """tools/keypoints_to_npz.py: a folder of OpenPose JSONs (BODY_25) or a COCO keypoint-results JSON -> a
    generic npz in COCO order with confidences; the most confident person per frame, a frame without one
    skipped, 0 0 0 joints missing; --predict lifts it; a broken file is one clear error."""
    d = write_generic_npz(tmp_path / "h36m.npz", n=24)
    coco = d["poses_2d"][:, H36M_AT_COCO]                                        # (N,17,2) COCO-17
    folder = tmp_path / "openpose"
    folder.mkdir()
    for i, c in enumerate(coco):
        body = np.zeros((25, 3))                                                  # BODY_25, neck/feet unseen
        body[KP.TO_COCO[25], :2], body[KP.TO_COCO[25], 2] = c, 0.9
        body[KP.TO_COCO[25][9], :] = 0 if i == 3 else body[KP.TO_COCO[25][9]]      # frame 3: no left wrist
        decoy = np.where(body > 0, body * 0.5, 0) * [1, 1, 0.5]                  # a less confident person
        people = [{"pose_keypoints_2d": p.ravel().tolist()} for p in (decoy, body)]
        (folder / f"clip_{i:012d}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people}))
    (folder / "clip_000000000100_keypoints.json").write_text(json.dumps({"version": 1.3, "people": []}))
    proc = run_cli("tools/keypoints_to_npz.py", folder, "--image-size", 1000, 1000, "--out", tmp_path / "op.npz")
    assert "wrote" in proc.stdout and "24 frames (1 without a person skipped)" in proc.stdout
    z = np.load(tmp_path / "op.npz")                                             # plain arrays only
    assert str(z["layout"]) == "coco" and z["frame"][-1] == "clip_000000000023" and len(z["frame"]) == len(coco)
    np.testing.assert_allclose(z["poses_2d"][..., :2][z["poses_2d"][..., 2] > 0], coco[z["poses_2d"][..., 2] > 0],
                               rtol=1e-6)
    x2d = P.load_keypoints(str(tmp_path / "op.npz"), None)["x2d"]              # H36M-17, the wrist NaN
    single = [1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 14, 15, 16]
    assert np.isnan(x2d[3, 13]).all() and np.isfinite(np.delete(x2d, 3, 0)).all()
    np.testing.assert_allclose(np.delete(x2d, 3, 0)[:, single], np.delete(d["poses_2d"], 3, 0)[:, single], rtol=1e-5)
    rows = [{"image_id": f"{i}.jpg", "category_id": 1, "score": s, "keypoints": (np.c_[c * f, np.ones(17)]).ravel().tolist()}
            for i, c in enumerate(coco) for s, f in ((2.5, 1.0), (0.3, 0.9))]    # 2 people an image
    (tmp_path / "results.json").write_text(json.dumps(rows[::-1]))
    assert KP.convert(str(tmp_path / "results.json"), str(tmp_path / "co.npz"), (1000, 1000)) == (len(coco), 0)
    z = np.load(tmp_path / "co.npz")
    np.testing.assert_allclose(z["poses_2d"][..., :2], coco, rtol=1e-6)      # the better person, in image order
    assert z["frame"][:3].tolist() == ["0.jpg", "1.jpg", "2.jpg"] and z["camera"][0].tolist() == [1000, 1000, 500, 500]
    rows[0]["keypoints"] = rows[0]["keypoints"][:-3]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    one_line_error(run_cli("tools/keypoints_to_npz.py", tmp_path / "results.json", "--image-size", 1000, 1000,
                           "--out", tmp_path / "x.npz", check=False), "results.json", "length 48", "25, 18 or 17")
    with pytest.raises(InputError, match="no frame holds a person"):
        KP.convert(str(folder), str(tmp_path / "x.npz"), (1000, 1000), min_confidence=0.95)


def test_builtin_builder_does_not_import_the_script():
    code = "import sys; sys.path.insert(0, 'tools'); import pose_builtin; assert 'pose_aign' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def write_generic_npz(path, n=40, seed=0, **override):
    pc, cam = random_poses(n // 2, seed)
    d = {"poses_2d": B.project_np(pc, cam).astype(np.float32), "camera": cam.astype(np.float32),
         "poses_3d": pc.astype(np.float32), "subject": np.array(["A"] * (len(pc) // 2) + ["B"] * (len(pc) - len(pc) // 2)),
         "action": np.array(["walk"] * len(pc))}
    d.update(override)
    np.savez(path, **{k: v for k, v in d.items() if v is not None})
    return d


def test_generic_npz_loader_and_errors(tmp_path):
    good = tmp_path / "good.npz"
    d = write_generic_npz(good)
    split, subj = P.load_pose_npz(str(good))
    assert split["x2d"].shape == d["poses_2d"].shape and subj is not None
    bad = tmp_path / "bad.npz"
    write_generic_npz(bad, poses_2d=np.zeros((len(d["camera"]), 16, 2), np.float32))
    with pytest.raises(InputError, match=r"bad.npz.*poses_2d.*\(N, 17, 2\)"):
        P.load_pose_npz(str(bad))
    conf = np.ones(d["poses_2d"].shape[:2] + (1,), np.float32)
    conf[2, [5, 9]] = 0                                                   # a detector missed 2 joints
    write_generic_npz(bad, poses_2d=np.concatenate([d["poses_2d"], conf], -1))
    x2d = P.load_pose_npz(str(bad))[0]["x2d"]                             # (N,17,2), missed joints NaN
    assert np.isnan(x2d).sum() == 4 and np.isnan(x2d[2, [5, 9]]).all()
    np.testing.assert_array_equal(np.nan_to_num(x2d), np.where(conf > 0, d["poses_2d"], 0))
    nan = d["poses_2d"].copy()
    nan[3] = np.nan
    write_generic_npz(bad, poses_2d=nan)
    with pytest.raises(InputError, match="no valid 2D joint"):
        P.load_pose_npz(str(bad))
    write_generic_npz(bad, subject=np.array(["A", "B"]))
    with pytest.raises(InputError, match=r"'subject' has shape \(2,\)"):
        P.load_pose_npz(str(bad))
    write_generic_npz(bad, action=np.array("walk"))
    with pytest.raises(InputError, match=r"poses_2d has 40 frames but camera 40, poses_3d 40, subject/action \(\); "
                                         r"expected one N"):
        P.load_pose_npz(str(bad))
    write_generic_npz(bad, distortion=np.full(5, 0.01))                      # one lens for all frames
    assert P.load_pose_npz(str(bad))[0]["dist"].shape == (len(d["camera"]), 9)
    for lens, needle in ((np.zeros(4), r"'distortion' has shape \(4,\).*\(5,\)"),
                         (np.zeros((3, 5)), "poses_2d has 40 frames but camera 40, distortion 3,"),
                         (np.array([0, np.nan, 0, 0, 0]), "'distortion' holds 1 NaN/inf")):
        write_generic_npz(bad, distortion=lens)
        with pytest.raises(InputError, match=needle):
            P.load_pose_npz(str(bad))
    np.savez(bad, poses_2d=np.array([{"a": 1}], dtype=object), camera=np.ones(4))
    with pytest.raises(InputError, match="pickled objects"):
        P.load_pose_npz(str(bad))
    with pytest.raises(InputError, match="no such file"):
        P.load_pose_npz(str(tmp_path / "missing.npz"))


def test_generic_npz_reads_coco_order_2d_by_its_layout_or_the_flag(tmp_path):
    """A detector's COCO-17 2D (+ confidence) beside H36M-17 3D: mapped to H36M-17 by 'layout' or
    --keypoint-order; the single-joint mappings land on the true projections, the 3D check passes."""
    d = write_generic_npz(tmp_path / "h36m.npz")
    coco = np.concatenate([d["poses_2d"][:, H36M_AT_COCO], np.ones((len(d["camera"]), 17, 1), np.float32)], -1)
    coco[0, 9, 2] = 0                                                         # a missed left wrist
    write_generic_npz(tmp_path / "coco.npz", poses_2d=coco, layout=np.array("coco"))
    write_generic_npz(tmp_path / "flag.npz", poses_2d=coco)
    single = [1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 14, 15, 16]
    for x2d in (P.load_pose_npz(str(tmp_path / "coco.npz"))[0]["x2d"],
                P.load_pose_npz(str(tmp_path / "flag.npz"), "coco")[0]["x2d"]):
        np.testing.assert_allclose(x2d[1:, single], d["poses_2d"][1:, single], atol=1e-3)
        assert np.isnan(x2d[0, 13]).all() and np.isfinite(x2d[0, single[:-4]]).all()
    with pytest.raises(InputError, match="does not project onto poses_2d"):        # COCO read as H36M
        P.load_pose_npz(str(tmp_path / "flag.npz"))
    write_generic_npz(tmp_path / "mpii.npz", layout=np.array("mpii"))
    with pytest.raises(InputError, match=r"mpii.npz: 'layout' is 'mpii'; expected 'h36m' or 'coco'"):
        P.load_pose_npz(str(tmp_path / "mpii.npz"))


def test_generic_npz_takes_opencv_cameras_k_and_dist_coeffs_and_image_size(tmp_path):
    """OpenCV's K (3,3)/(N,3,3) and dist_coeffs (k1 k2 p1 p2 [k3 ...]) load as the same camera as fx fy cx cy
    and as OpenCV's lens model, whose 2D (projectPoints) the renderer then reproduces; image_size gives
    f = max(w, h) at the middle; a skewed K, both lens keys at once, or a rational model, are one clear error."""
    d = write_generic_npz(tmp_path / "ref.npz", distortion=np.float32([0.02, -0.01, 0.003, 0.001, -0.002]))
    ref = P.load_pose_npz(str(tmp_path / "ref.npz"))[0]
    (fx, fy, cx, cy), o, i = d["camera"].T, np.zeros(len(d["camera"])), np.ones(len(d["camera"]))
    K = np.stack([fx, o, cx, o, fy, cy, o, o, i], 1).reshape(-1, 3, 3)               # (N,3,3)
    for coeffs in ([-0.2, 0.05, 0.002, -0.003, 0.01], [-0.2, 0.05, 0.002, -0.003, 0.01, 0, 0, 0]):
        x2d = naive_opencv_project(d["poses_3d"], d["camera"], np.tile(coeffs[:5], (len(K), 1)))
        write_generic_npz(tmp_path / "cv.npz", camera=K, distortion=None, dist_coeffs=np.float32(coeffs),
                          poses_2d=x2d.astype(np.float32))
        cv = P.load_pose_npz(str(tmp_path / "cv.npz"))[0]
        np.testing.assert_allclose(cv["cam"], ref["cam"], rtol=1e-6)
        xy = P.distort(torch.tensor(cv["y3d"][..., :2] / cv["y3d"][..., 2:], dtype=torch.float64),
                       torch.tensor(cv["dist"], dtype=torch.float64)).numpy()
        np.testing.assert_allclose(xy * cv["cam"][:, None, :2] + cv["cam"][:, None, 2:], x2d, atol=2e-3)
    (tmp_path / "k.json").write_text(json.dumps({"keypoints": d["poses_2d"][:1].tolist(), "camera": K[0].tolist()}))
    np.testing.assert_allclose(P.load_keypoints(str(tmp_path / "k.json"), None)["cam"], ref["cam"][:1], rtol=1e-6)
    skew = K.copy()
    skew[:, 0, 1] = 0.5
    for bad, needle in (({"camera": skew}, r"'camera' as K must be .*no skew"),
                        ({"dist_coeffs": np.zeros(5)}, r"'dist_coeffs' has shape \(5,\) beside distortion"),
                        ({"distortion": None, "dist_coeffs": np.zeros(3)}, r"'dist_coeffs' has shape \(3,\); "),
                        ({"distortion": None, "dist_coeffs": np.float32([0, 0, 0, 0, 0, 0.1, 0, 0])},
                         r"'dist_coeffs' has non-zero terms after k3 \(8 values: OpenCV's rational")):
        write_generic_npz(tmp_path / "bad.npz", **{"distortion": d["distortion"], **bad})
        with pytest.raises(InputError, match=needle):
            P.load_pose_npz(str(tmp_path / "bad.npz"))
    write_generic_npz(tmp_path / "size.npz", camera=None, poses_3d=None, image_size=np.array([1000, 800]))
    np.testing.assert_allclose(P.load_pose_npz(str(tmp_path / "size.npz"))[0]["cam"][0], [1000, 1000, 500, 400])


def test_paired_actions_pair_the_first_frames_of_those_actions_only():
    """--paired-actions b c --paired-frac 0.5: the paired rows are the first half (rounded) of the frames of
    actions b and c, in file order, and each drawn paired 2D row comes with its own frame's 3D target; without
    the flag the first --paired-frac of all frames, as before."""
    pc, cam = random_poses(20)                                                    # (40,17,3), (40,4)
    action = np.array(list("abcab" * 8))
    tr = {"x2d": B.project_np(pc, cam).astype(np.float32), "cam": cam.astype(np.float32), "dist": None,
          "y3d": pc.astype(np.float32), "action": action}
    data = {"train": tr, "memory": pc.astype(np.float32), "memory_src": "m", "elevation": (-10, 40)}
    expected = {("b", "c"): [i for i, a in enumerate(action) if a in "bc"][:12], None: list(range(20))}
    for actions, rows in expected.items():
        args = P.get_args(["--batch-size", "16", "--paired-frac", "0.5"]
                          + (["--paired-actions", *actions] if actions else []))
        data["train_set"] = t = P.training_set(args, data, torch.device("cpu"))
        assert t["paired"].tolist() == rows
        batch = P.draw_batch(data, torch.Generator().manual_seed(0), args, common.Dist("cpu"))
        for x, y in zip(batch["x2d"][16:], batch["y3d"]):                          # the paired rows
            i = int(np.flatnonzero((tr["x2d"] == x.numpy()).all((1, 2)))[0])
            assert i in rows
            np.testing.assert_allclose(y.numpy(), pc[i] - pc[i, :1], atol=1e-6)
    with pytest.raises(InputError, match="--paired-actions b z: the training frames' actions are a b c"):
        P.training_set(P.get_args(["--paired-frac", "1", "--paired-actions", "b", "z"]), data, torch.device("cpu"))


def test_paired_term_weighs_the_labelled_share_beside_the_unpaired_terms(monkeypatch):
    """AIGN + pairs: each training frame counts once, so the paired 3D term is weighted by n_paired / N_train
    (data/pose_s10/RULE.md); supervised-only keeps weight 1. The G loss handed to the optimiser is exactly
    lambda_rec rec + lambda_adv adv + lambda_sup share sup."""
    pc, cam = random_poses(20)                                                    # (40,17,3), (40,4)
    tr = {"x2d": B.project_np(pc, cam).astype(np.float32), "cam": cam.astype(np.float32), "dist": None,
          "y3d": pc.astype(np.float32), "action": np.array(["a"] * 40)}
    data = {"train": tr, "memory": pc.astype(np.float32), "memory_src": "m", "elevation": (-10, 40)}
    seen = []
    monkeypatch.setattr(common, "optimiser_step", lambda opt, loss, *a: seen.append(float(loss.detach())))
    for flags, weight in ((["--paired-frac", "0.25"], 10 / 40),
                          (["--paired-frac", "0.25", "--lambda-rec", "0", "--lambda-adv", "0"], 1.0)):
        args = P.get_args(["--batch-size", "8", *flags])
        data["train_set"] = P.training_set(args, data, torch.device("cpu"))
        assert data["train_set"]["sup_w"] == pytest.approx(weight)
        batch = P.draw_batch(data, torch.Generator().manual_seed(0), args, common.Dist("cpu"))
        torch.manual_seed(0)
        nets = P.build_nets(args, torch.device("cpu"))
        seen.clear()
        losses = P.train_step(nets, {"G": None, "D": None}, batch, args, common.Dist("cpu"), 0)
        expected = (args.lambda_rec * losses["loss_rec"] + args.lambda_adv * losses["loss_adv"]
                    + args.lambda_sup * weight * losses["loss_sup"])
        assert losses["loss_sup"] > 0 and seen[-1] == pytest.approx(expected, rel=1e-5)


def test_joint_dropout_hides_training_joints_and_leaves_the_default_draws_alone():
    pc, cam = random_poses(20)                                                    # (40,17,3), (40,4)
    tr = {"x2d": B.project_np(pc, cam).astype(np.float32), "cam": cam.astype(np.float32), "dist": None,
          "y3d": pc.astype(np.float32), "action": np.array(["a"] * 40)}
    data = {"train": tr, "memory": pc.astype(np.float32), "memory_src": "m", "elevation": (-10, 40)}
    batches = {}
    for p in ("0", "0.3"):
        args = P.get_args(["--batch-size", "32", "--paired-frac", "0.5", "--joint-dropout", p])
        data["train_set"] = P.training_set(args, data, torch.device("cpu"))
        batches[p] = P.draw_batch(data, torch.Generator().manual_seed(0), args, common.Dist("cpu"))
    plain = P.draw_batch(data, torch.Generator().manual_seed(0), P.get_args(["--batch-size", "32", "--paired-frac",
                                                                              "0.5"]), common.Dist("cpu"))
    assert torch.equal(plain["x2d"], batches["0"]["x2d"]) and torch.isfinite(plain["x2d"]).all()
    hidden = torch.isnan(batches["0.3"]["x2d"]).any(-1)                           # (64,17): unpaired, paired
    assert hidden.shape == (64, 17) and 0.22 < hidden.float().mean() < 0.38 and not hidden.all(1).any()
    assert not torch.equal(hidden[:32], hidden[32:])                              # drawn apart
    keep = ~torch.isnan(batches["0.3"]["x2d"])
    assert torch.equal(batches["0.3"]["x2d"][keep], plain["x2d"][keep])           # the same rows, some joints hidden
    with pytest.raises(InputError, match="--joint-dropout 1.0: expected a probability"):
        P.get_args(["--joint-dropout", "1"])


def test_train_step_never_waits_for_the_device():
    """The CUDA path is launch-bound, so train_step must not read values back to the host (.item(), int() of a
    tensor): on CPU each read is an aten::_local_scalar_dense call, counted here outside the optimiser (Adam
    keeps its step counts on the host) and torch's own LU solve (the renderer's 3x3 translation solve, whose
    checks read back inside torch). With lens distortion and pairs."""
    from torch.profiler import profile, ProfilerActivity
    pc, cam = random_poses(20)                                                    # (40,17,3), (40,4)
    lens = np.tile(P.lens_of([-0.2, 0.2, -0.01, 1e-3, -1e-3], "videopose3d"), (40, 1)).astype(np.float32)  # (40,9)
    x2d = P.distort(torch.as_tensor(pc[..., :2] / pc[..., 2:]), torch.as_tensor(lens)).numpy()
    tr = {"x2d": (x2d * cam[:, None, :2] + cam[:, None, 2:]).astype(np.float32), "cam": cam.astype(np.float32),
          "dist": lens, "y3d": pc.astype(np.float32), "action": np.array(["a"] * 40)}
    data = {"train": tr, "memory": pc.astype(np.float32), "memory_src": "m", "elevation": (-10, 40)}
    args = P.get_args(["--batch-size", "8", "--paired-frac", "0.25"])
    data["train_set"] = P.training_set(args, data, torch.device("cpu"))
    nets = P.build_nets(args, torch.device("cpu"))
    opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr) for k, m in nets.items()}
    batch = P.draw_batch(data, torch.Generator().manual_seed(0), args, common.Dist("cpu"))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        losses = P.train_step(nets, opts, batch, args, common.Dist("cpu"), 0)
    reads = []
    for e in prof.events():
        if e.name == "aten::_local_scalar_dense":
            chain = [e.name]
            while e.cpu_parent is not None:
                e = e.cpu_parent
                chain.append(e.name)
            reads.append(" <- ".join(chain))
    assert [r for r in reads if "Optimizer.step" not in r and "LinalgSolve" not in r and "linalg_solve" not in r] == []
    assert all(torch.is_tensor(v) and v.dtype == torch.float64 for v in losses.values())


def test_loaders_refuse_millimetres_collapsed_poses_points_behind_the_camera_non_pixels_and_empty_splits(tmp_path):
    bad, d = tmp_path / "bad.npz", write_generic_npz(tmp_path / "good.npz")
    for override, needle in (({"poses_3d": d["poses_3d"] * 1000}, "median bone length of .*millimetres"),
                             ({"poses_3d": d["poses_3d"] * [1, 1, -1]}, "depth z <= 0.*camera coordinates"),
                             ({k: v[:0] for k, v in d.items()}, "no frames"),
                             ({"poses_2d": (d["poses_2d"] - 500) / 500}, r"span a median 0\.\d+ px.*normalised"),
                             ({"poses_2d": d["poses_2d"] * 1e30}, "focal lengths off the principal point")):
        write_generic_npz(bad, **override)
        with pytest.raises(InputError, match=needle):
            P.load_pose_npz(str(bad))
    for poses, needle in ((d["poses_3d"] * 1000, "millimetres"), (np.zeros((30, 17, 3)), "median bone length of 0,")):
        np.savez(bad, poses_3d=poses)
        with pytest.raises(InputError, match=needle):
            P.load_memory(str(bad))
    write_generic_npz(bad, **{k: v[:1] for k, v in d.items()})
    args = P.get_args(["--data", str(bad)])
    with pytest.raises(InputError, match="leave no training frames"):
        P.load_data(args, None)
    np.savez(bad, poses_3d=np.zeros((0, 17, 3)))
    with pytest.raises(InputError, match="'poses_3d' holds 0 poses"):
        P.load_memory(str(bad))
    write_h36m(tmp_path)
    pos3d = P.load_pickled_dict(str(tmp_path / "data_3d_h36m.npz"), "positions_3d")
    (tmp_path / "empty").mkdir()  # the test subjects present but without an action
    np.savez(tmp_path / "empty" / "data_3d_h36m.npz",
             positions_3d={s: ({} if s in P.H36M_TEST else v) for s, v in pos3d.items()})
    shutil.copy(tmp_path / "data_2d_h36m_gt.npz", tmp_path / "empty")
    with pytest.raises(InputError, match="no frames for the test subjects S9 S11"):
        P.load_h36m(str(tmp_path / "empty"), "gt")
    with pytest.raises(InputError, match=r"data_2d_h36m_cpn.npz: no such file \(--keypoints cpn\); found --keypoints \['gt'\]"):
        P.load_h36m(str(tmp_path), "cpn")


def test_loaders_refuse_a_camera_model_or_3d_that_does_not_fit_the_2d_and_degenerate_memories(tmp_path):
    """Found by a hostile-input audit: a lens that cannot be inverted, 3D that does not project onto its 2D
    (x/y swapped, a world frame), centimetres, a memory of one pose, 2D shorter than its Human3.6M 3D and a
    subject that is not a dict are each one clear error; detector-like 2D noise (3% of a pose) is not."""
    bad, d = tmp_path / "bad.npz", write_generic_npz(tmp_path / "good.npz")
    span = np.median(np.ptp(d["poses_2d"], 1).max(-1))
    noisy = d["poses_2d"] + np.random.default_rng(0).normal(0, 0.03 * span / 1.25, d["poses_2d"].shape)
    for override, needle in (({"distortion": np.array([100.0, 0, 0, 0, 0])}, "lens distortion cannot be inverted"),
                             ({"poses_3d": d["poses_3d"][..., [1, 0, 2]]}, "does not project onto poses_2d"),
                             ({"poses_3d": d["poses_3d"] + [2.0, 0, 0]}, r"a median \d+% of a pose's extent off"),
                             ({"poses_3d": d["poses_3d"] * 100}, "centimetres"),
                             ({"poses_2d": noisy.astype(np.float32)}, None)):
        write_generic_npz(bad, **override)
        if needle is None:
            P.load_pose_npz(str(bad))
            continue
        with pytest.raises(InputError, match=needle):
            P.load_pose_npz(str(bad))
    np.savez(bad, poses_3d=np.repeat(d["poses_3d"][:1], 30, 0))
    with pytest.raises(InputError, match="'poses_3d' holds one pose, repeated 30 times"):
        P.load_memory(str(bad))
    write_h36m(tmp_path)
    pos2d = P.load_pickled_dict(str(tmp_path / "data_2d_h36m_gt.npz"), "positions_2d")
    (tmp_path / "short").mkdir()
    shutil.copy(tmp_path / "data_3d_h36m.npz", tmp_path / "short")
    pos2d["S1"]["Walking 1"] = [v[:3] for v in pos2d["S1"]["Walking 1"]]
    np.savez(tmp_path / "short" / "data_2d_h36m_gt.npz", positions_2d=pos2d)
    with pytest.raises(InputError, match="S1/Walking 1 camera 0 has 3 frames of 2D, fewer than the 6 of its 3D"):
        P.load_h36m(str(tmp_path / "short"), "gt")
    np.savez(tmp_path / "short" / "data_2d_h36m_gt.npz", positions_2d={**pos2d, "S1": [1, 2]})
    with pytest.raises(InputError, match=r"positions_2d\['S1'\] is list, not a dict"):
        P.load_h36m(str(tmp_path / "short"), "gt")


def test_a_diverging_run_stops_with_one_clear_error_and_no_checkpoint(tmp_path):
    write_generic_npz(tmp_path / "d.npz")
    write_mem(tmp_path / "mem.npz")
    proc = run_cli("pose_aign.py", *TINY, "--batch-size", "16", "--steps", "2", "--data", tmp_path / "d.npz",
                   "--memory", tmp_path / "mem.npz", "--lr", "1e30", "--out", tmp_path / "o", check=False)
    one_line_error(proc, "training diverged by step 2", "NaN/inf")
    assert not (tmp_path / "o" / "ckpt.pt").exists()


def write_h36m(folder, frames=6, evil=False, layout="h36m"):
    """VideoPose3D layout: pickled dicts in npz; 2D made consistent with the 3D and the cameras. With
    layout="coco" the 2D is a COCO-17 detector's (data_2d_h36m_detectron_pt_coco.npz): the 3D's pelvis,
    spine and thorax are then the means of its hips and shoulders, as the COCO -> H36M mapping reads them."""
    rng = np.random.default_rng(0)
    intrinsics, extrinsics = P.H36M_INTRINSICS, P.H36M_EXTRINSICS
    keep = np.array(P.H36M_KEEP)
    pos3d, pos2d = {}, {}
    for s in P.H36M_TRAIN + P.H36M_TEST:
        world = rng.normal(0, 0.1, (frames, 32, 3)).astype(np.float32) + np.array([0, 0, 1.0], np.float32)
        if layout == "coco":  # pelvis, thorax, spine: the means of these H36M joints
            for j, parts in {0: [1, 4], 8: [11, 14], 7: [1, 4, 11, 14]}.items():
                world[:, keep[j]] = world[:, keep[parts]].mean(1)
        pos3d[s] = {"Walking 1": world, "Directions": world[:4]}
        pos2d[s] = {}
        for action, w in pos3d[s].items():
            views = []
            for c in range(4):
                q, t = np.array(extrinsics[s][c][:4]), np.array(extrinsics[s][c][4:]) / 1000
                xc = (w[:, P.H36M_KEEP] - t) @ P.quat_to_matrix(q)
                kp = naive_h36m_project(xc, np.tile(intrinsics[c], (len(w), 1)),
                                        np.tile(P.H36M_DISTORTION[c], (len(w), 1))).astype(np.float32)
                kp = kp[:, H36M_AT_COCO] if layout == "coco" else kp
                views.append(kp)
            pos2d[s][action] = views
    np.savez(os.path.join(folder, "data_3d_h36m.npz"), positions_3d=pos3d)
    np.savez(os.path.join(folder, "data_2d_h36m_gt.npz" if layout == "h36m" else
                          "data_2d_h36m_detectron_pt_coco.npz"), positions_2d=pos2d,
             metadata={"layout_name": layout, "num_joints": 17})
    if evil:  # a pickle that would run code if loaded naively
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > " + os.path.join(folder, "pwned"),))
        with zipfile.ZipFile(os.path.join(folder, "data_3d_h36m.npz"), "w") as zf:
            with zf.open("positions_3d.npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
                pickle.dump(Evil(), f)


def test_h36m_loader_standard_split_and_cameras(tmp_path):
    write_h36m(tmp_path)
    splits, memory = P.load_h36m(str(tmp_path), "gt")
    # train: 5 subjects x (6 + 4 frames) x 4 cameras; test: S9 and S11 minus S11 Directions camera 0
    assert len(splits["train"]["x2d"]) == 5 * 10 * 4
    assert len(splits["test"]["x2d"]) == 2 * 10 * 4 - 4
    assert set(splits["test"]["action"]) == {"Walking", "Directions"}
    assert memory.shape == (5 * 10, 17, 3)
    # the camera-frame 3D projects onto the 2D keypoints with the built-in intrinsics and lens
    tr = splits["train"]
    xy = P.distort(torch.tensor(tr["y3d"][..., :2] / tr["y3d"][..., 2:]), torch.tensor(tr["dist"])).numpy()
    np.testing.assert_allclose(xy * tr["cam"][:, None, :2] + tr["cam"][:, None, 2:], tr["x2d"], rtol=1e-4, atol=1e-2)
    assert np.abs(B.project_np(tr["y3d"], tr["cam"]) - tr["x2d"]).max() > 1.0   # a pinhole would miss


def test_h36m_loader_maps_coco_layout_2d_by_its_metadata(tmp_path):
    """VideoPose3D's detectron_pt_coco 2D is in COCO order (metadata layout_name 'coco'): it is mapped
    to H36M-17 and then fits the 3D; an unknown layout (the MPII-16 hourglass files) is a clear error."""
    write_h36m(tmp_path)
    ref = P.load_h36m(str(tmp_path), "gt")[0]["train"]
    write_h36m(tmp_path, layout="coco")
    tr = P.load_h36m(str(tmp_path), "detectron_pt_coco")[0]["train"]
    assert tr["x2d"].shape == ref["x2d"].shape
    single = [1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 14, 15, 16]      # joints with one COCO counterpart
    xy = P.distort(torch.tensor(tr["y3d"][..., :2] / tr["y3d"][..., 2:]), torch.tensor(tr["dist"])).numpy()
    px = xy * tr["cam"][:, None, :2] + tr["cam"][:, None, 2:]
    np.testing.assert_allclose(tr["x2d"][:, single], px[:, single], atol=1e-2)
    np.testing.assert_allclose(tr["x2d"][:, 0], tr["x2d"][:, [1, 4]].mean(1), atol=1e-3)   # pelvis: the hips
    assert np.abs(tr["x2d"][:, 0] - px[:, 0]).max() < 2.0     # the mean of projections ~ the projected mean
    z = dict(np.load(tmp_path / "data_2d_h36m_detectron_pt_coco.npz", allow_pickle=True))
    np.savez(tmp_path / "data_2d_h36m_sh_pt_mpii.npz", positions_2d=z["positions_2d"],
             metadata={"layout_name": "mpii", "num_joints": 16})
    with pytest.raises(P.InputError, match=r"sh_pt_mpii.npz: metadata .*'mpii'.*16.*expected 17 keypoints"):
        P.load_h36m(str(tmp_path), "sh_pt_mpii")


def test_h36m_loader_refuses_code_in_pickles(tmp_path):
    write_h36m(tmp_path, evil=True)
    with pytest.raises(InputError, match="refusing to load"):
        P.load_h36m(str(tmp_path), "gt")
    assert not (tmp_path / "pwned").exists()


def test_h36m_3d_file_is_a_memory_and_its_2d_file_alone_a_clear_error(tmp_path):
    """--memory data_3d_h36m.npz (Human3.6M's mocap for other 2D): the 17 kept joints of its training subjects
    only (S9, S11 stay unseen); an evil pickle there runs nothing; --data data_2d_h36m_gt.npz alone names the
    folder layout it belongs to."""
    write_h36m(tmp_path)
    mem = P.load_memory(str(tmp_path / "data_3d_h36m.npz"))
    pos3d = P.load_pickled_dict(str(tmp_path / "data_3d_h36m.npz"), "positions_3d")
    want = np.concatenate([w[:, P.H36M_KEEP] for s in P.H36M_TRAIN for w in pos3d[s].values()])
    np.testing.assert_array_equal(mem, want)
    one_line_error(run_cli("pose_aign.py", "--data", tmp_path / "data_2d_h36m_gt.npz", "--steps", "1", "--out",
                           tmp_path / "run", check=False), "data_2d_h36m_gt.npz", "pass its folder as --data")
    (tmp_path / "evil").mkdir()
    write_h36m(tmp_path / "evil", evil=True)
    with pytest.raises(InputError, match="refusing to load"):
        P.load_memory(str(tmp_path / "evil" / "data_3d_h36m.npz"))
    assert not (tmp_path / "evil" / "pwned").exists()


def test_predict_input_coco_json(tmp_path):
    pc, cam = random_poses(2)
    h36m = B.project_np(pc, cam)
    coco = np.zeros((len(pc), 17, 3))
    coco[:, :, 2] = 1
    for c, h in {11: 4, 12: 1, 13: 5, 14: 2, 15: 6, 16: 3, 5: 11, 6: 14, 7: 12, 8: 15, 9: 13, 10: 16, 0: 9}.items():
        coco[:, c, :2] = h36m[:, h]
    coco[:, 1:5, :2] = h36m[:, 10:11]
    coco[0, 9, 2] = 0  # a missed detection of the left wrist
    path = tmp_path / "kp.json"
    path.write_text(json.dumps({"keypoints": coco.tolist(), "image_size": [1000, 1000], "layout": "coco"}))
    split = P.load_keypoints(str(path), None)
    assert split["x2d"].shape == (len(pc), 17, 2)
    np.testing.assert_allclose(split["x2d"][:, 0], (h36m[:, 1] + h36m[:, 4]) / 2, atol=1e-3)  # pelvis = mid-hip
    assert np.isnan(split["x2d"][0, 13]).all() and np.isfinite(split["x2d"][1, 13]).all()
    np.testing.assert_allclose(split["cam"][0], [1000, 1000, 500, 500])
    for name in ("kp.JSON", "kp.txt"):  # JSON is read by its content, whatever the file's name
        (tmp_path / name).write_text(path.read_text())
        np.testing.assert_array_equal(P.load_keypoints(str(tmp_path / name), None)["x2d"], split["x2d"])


# ---------------------------------------------------------------------------------------------
# Command line: train, checkpoint, resume, eval-only, predict, torchrun, errors
TINY = ["--hidden", "64", "--blocks", "1", "--batch-size", "64", "--no-progress", "--device", "cpu"]


def test_cli_train_outputs(tmp_path, cache_root):
    out = tmp_path / "run"
    run_cli("pose_aign.py", *TINY, "--steps", "6", "--eval-every", "3", "--out", out)
    for f in ["args.json", "versions.json", "command.txt", "metrics.jsonl", "results.json", "ckpt.pt",
              "samples.png", "turntable.gif"]:
        assert (out / f).exists(), f
    res = json.loads((out / "results.json").read_text())
    assert {"mpjpe", "p_mpjpe", "n_mpjpe", "per_action", "steps", "wall_s", "samples_per_s"} <= set(res)
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [3, 6]


def test_cli_resume_is_exact(tmp_path, cache_root):
    flags = [*TINY, "--steps", "8", "--eval-every", "4", "--paired-frac", "0.05"]
    run_cli("pose_aign.py", *flags, "--out", tmp_path / "straight")
    run_cli("pose_aign.py", *TINY, "--steps", "4", "--eval-every", "4", "--paired-frac", "0.05", "--out", tmp_path / "split")
    (tmp_path / "split" / "metrics.jsonl").write_text("")  # as if killed while validating after its checkpoint
    run_cli("pose_aign.py", *flags, "--resume", tmp_path / "split" / "ckpt.pt")  # --out defaults to the ckpt's folder
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for net in ("G", "D"):
        for k in a["nets"][net]:
            assert torch.equal(a["nets"][net][k], b["nets"][net][k]), (net, k)
    ra, rb = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "split"))
    assert ra["p_mpjpe"] == rb["p_mpjpe"]
    la, lb = ((tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("straight", "split"))
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k != "wall_s"} for l in lines]
    assert strip(la) == strip(lb)


def test_cli_eval_only_and_predict(tmp_path, cache_root):
    run_cli("pose_aign.py", *TINY, "--steps", "3", "--eval-every", "3", "--out", tmp_path / "run")
    ckpt = tmp_path / "run" / "ckpt.pt"
    data = tmp_path / "mine.npz"
    write_generic_npz(data, n=40)
    run_cli("pose_aign.py", "--eval-only", "--resume", ckpt, "--data", data, "--out", tmp_path / "ev", "--device", "cpu")
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["dataset"] == "mine.npz" and res["n_test"] == 20 and res["step"] == 3
    pc, cam = random_poses(2)
    kp = tmp_path / "kp.npz"
    np.savez(kp, keypoints=B.project_np(pc, cam), camera=cam[0])
    proc = run_cli("pose_aign.py", "--predict", kp, "--resume", ckpt, "--out", tmp_path / "pred", "--device", "cpu")
    pred = np.load(tmp_path / "pred" / "predictions.npz")
    assert pred["poses_3d"].shape == (len(pc), 17, 3) and np.all(pred["poses_3d"][..., 2] > 0)
    assert "miss joints" not in proc.stdout
    x2d = B.project_np(pc, cam)
    x2d[0, 13] = np.nan                                                      # a detector missed a wrist
    np.savez(kp, keypoints=x2d, camera=cam[0])
    proc = run_cli("pose_aign.py", "--predict", kp, "--resume", ckpt, "--out", tmp_path / "pred2", "--device", "cpu")
    assert f"note: 1 of {len(pc)} frames miss joints, and this G was trained on complete 2D" in proc.stdout


def test_cli_torchrun_two_cpu_processes(tmp_path, cache_root):
    out = tmp_path / "ddp"
    run_cli("pose_aign.py", *TINY, "--steps", "4", "--eval-every", "2", "--out", out, torchrun_nproc=2, timeout=240)
    assert json.loads((out / "results.json").read_text())["steps"] == 4


def test_cli_resume_of_a_finished_run_keeps_its_stats(tmp_path, cache_root):
    out = tmp_path / "done"
    run_cli("pose_aign.py", *TINY, "--steps", "3", "--eval-every", "3", "--out", out)
    first = json.loads((out / "results.json").read_text())
    run_cli("pose_aign.py", *TINY, "--steps", "3", "--eval-every", "3", "--resume", out / "ckpt.pt")
    again = json.loads((out / "results.json").read_text())
    assert first["samples_per_s"] and (again["samples_per_s"], again["wall_s"]) == (first["samples_per_s"],
                                                                                    first["wall_s"])
    state = torch.load(out / "ckpt.pt", weights_only=True)
    for key, value, needle in (("hidden", "big", "--hidden: invalid int value: 'big'"),
                               ("camera", "fisheye", "--camera: invalid choice: 'fisheye'")):
        torch.save({**state, "args": {**state["args"], key: value}}, tmp_path / "edited.pt")   # a damaged file
        one_line_error(run_cli("pose_aign.py", "--eval-only", "--resume", tmp_path / "edited.pt", check=False),
                       "edited.pt: a damaged or edited checkpoint", needle)


@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--batch-size", "0"), ("--lambda-adv", "-1"),
                                         ("--eval-every", "0"), ("--paired-frac", "1.5"), ("--lr", "nan"),
                                         ("--hidden", "0"), ("--blocks", "-1"), ("--steps", "abc"),
                                         ("--camera", "fisheye")])
def test_cli_refuses_bad_values_before_writing(tmp_path, flag, value):
    proc = run_cli("pose_aign.py", flag, value, "--out", tmp_path / "o", check=False)
    one_line_error(proc, flag)
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_elevation_range_upside_down(tmp_path):
    proc = run_cli("pose_aign.py", "--elevation", "30", "10", "--out", tmp_path / "o", check=False)
    one_line_error(proc, "--elevation", "LO <= HI")
    assert not (tmp_path / "o").exists()


def write_mem(path, n=100, seed=0, **override):
    np.savez(path, **{"poses_3d": random_poses(n // 2, seed)[0].astype(np.float32), **override})


@pytest.mark.parametrize("case, needles", [
    ("missing_data", ["no such file"]),
    ("corrupt_ckpt", ["--resume", "cannot be read"]),
    ("other_script_ckpt", ["--resume", "not a checkpoint of pose_aign.py"]),
    ("incomplete_ckpt", ["--resume", "missing"]),
    ("out_is_file", ["--out", "is a file"]),
    ("wrong_shape", ["w.npz", r"poses_2d", "(N, 17, 2)"]),
    ("inf_keypoints", ["inf.npz", "inf value", "only NaN"]),
    ("zero_focal", ["cam0.npz", "focal lengths must be finite and positive"]),
    ("nan_focal", ["camnan.npz", "camera", "NaN/inf"]),
    ("no_memory", ["--memory"]),
    ("nan_memory", ["memnan.npz", "poses_3d", "NaN/inf"]),
    ("small_memory", ["--memory", "--batch-size"]),
    ("memory_shape", ["mem16.npz", "(N, 17, 3)"]),
    ("distortion_shape", ["lens.npz", "'distortion'", "(5,)"]),
    ("paired_actions", ["--paired-actions jump", "actions are walk"]),
])
def test_cli_bad_input_is_one_clear_error(tmp_path, cache_root, case, needles):
    d = tmp_path
    one = d / "one.npz"
    write_generic_npz(one)
    write_mem(d / "mem.npz")
    args = {"missing_data": ["--data", d / "none.npz"], "corrupt_ckpt": ["--resume", d / "c.pt"],
            "other_script_ckpt": ["--resume", d / "o.pt"], "incomplete_ckpt": ["--resume", d / "i.pt"],
            "out_is_file": ["--data", one, "--memory", d / "mem.npz", "--out", d / "file"],
            "wrong_shape": ["--data", d / "w.npz"], "inf_keypoints": ["--data", d / "inf.npz"],
            "zero_focal": ["--data", d / "cam0.npz"], "nan_focal": ["--data", d / "camnan.npz"],
            "no_memory": ["--data", one], "nan_memory": ["--data", one, "--memory", d / "memnan.npz"],
            "small_memory": ["--data", one, "--memory", d / "mem.npz", "--batch-size", "200"],
            "memory_shape": ["--data", one, "--memory", d / "mem16.npz"],
            "distortion_shape": ["--data", d / "lens.npz", "--memory", d / "mem.npz"],
            "paired_actions": ["--data", one, "--memory", d / "mem.npz", "--paired-frac", "1",
                               "--paired-actions", "jump"]}[case]
    (d / "c.pt").write_bytes(b"not a checkpoint")
    (d / "file").write_text("x")
    torch.save({"script": "face_aign", "step": 1}, d / "o.pt")
    torch.save({"script": "pose_aign", "step": 1, "args": {}}, d / "i.pt")
    write_generic_npz(d / "w.npz", poses_2d=np.zeros((20, 14, 2), np.float32))
    good = write_generic_npz(d / "scratch.npz")
    x2d = good["poses_2d"].copy()
    x2d[2, 5] = np.inf
    write_generic_npz(d / "inf.npz", poses_2d=x2d)
    cam = good["camera"].copy()
    cam[1, 0] = 0
    write_generic_npz(d / "cam0.npz", camera=cam)
    cam[1, 0] = np.nan
    write_generic_npz(d / "camnan.npz", camera=cam)
    mem = np.load(d / "mem.npz")["poses_3d"].copy()
    mem[3, 4, 1] = np.nan
    np.savez(d / "memnan.npz", poses_3d=mem)
    np.savez(d / "mem16.npz", poses_3d=mem[:, :16])
    write_generic_npz(d / "lens.npz", distortion=np.zeros((len(cam), 3)))
    proc = run_cli("pose_aign.py", *TINY, "--batch-size", "16", "--steps", "2", *(["--out", d / "o"] if case != "out_is_file" else []),
                   *args, check=False)
    one_line_error(proc, *needles)


def test_loaders_refuse_non_dict_h36m_pickles_and_ragged_json(tmp_path):
    write_h36m(tmp_path)
    for bad in (np.zeros((3, 32, 3)), [np.zeros((2, 32, 3)), np.zeros((3, 32, 3))], {"S1": [1, 2]}):
        np.savez(tmp_path / "data_3d_h36m.npz", positions_3d=np.array(bad, dtype=object)
                 if isinstance(bad, list) else bad)
        with pytest.raises(InputError, match="data_3d_h36m.npz.*expected 'positions_3d' as VideoPose3D"):
            P.load_h36m(str(tmp_path), "gt")
    ragged = tmp_path / "ragged.json"
    ragged.write_text(json.dumps({"keypoints": [[[1, 2]] * 17, [[1, 2]] * 16], "image_size": [100, 100]}))
    with pytest.raises(InputError, match="ragged.json.*'keypoints' is not a rectangular array"):
        P.load_keypoints(str(ragged), None)
    bad_cam = tmp_path / "cam.json"
    bad_cam.write_text(json.dumps({"keypoints": [[[1, 2]] * 17], "camera": [0, 1000, 50, 50]}))
    with pytest.raises(InputError, match="focal lengths"):
        P.load_keypoints(str(bad_cam), None)
    inf = tmp_path / "inf.json"
    inf.write_text(json.dumps({"keypoints": [[[1, 2]] * 16 + [[1e999, 2]]], "image_size": [100, 100]}))
    with pytest.raises(InputError, match="inf value"):
        P.load_keypoints(str(inf), None)
    kp = (np.arange(34).reshape(1, 17, 2) * 10.0).tolist()
    for extra, needle in (({"image_size": [-100, 100]}, "'image_size' is -100 x 100; expected a positive"),
                          ({"image_size": [100, 100], "layout": "openpose"}, "'layout' is 'openpose'")):
        inf.write_text(json.dumps({"keypoints": kp, **extra}))
        with pytest.raises(InputError, match=needle):
            P.load_keypoints(str(inf), None)


def test_standalone_copy_trains_resumes_evaluates_predicts(tmp_path):
    """pose_aign.py + common.py alone in an empty folder, on user files in each format (+ --memory)."""
    folder = standalone_copy("pose_aign.py", tmp_path / "alone")
    env = {"AIGN_CACHE": str(tmp_path / "cache")}
    (tmp_path / "generic").mkdir()
    for role, seed in (("train", 0), ("test", 1)):
        write_generic_npz(tmp_path / "generic" / f"{role}.npz", n=40, seed=seed)
    write_mem(tmp_path / "generic" / "memory.npz")
    write_generic_npz(tmp_path / "one.npz", n=60, seed=2)
    write_mem(tmp_path / "mem.npz", seed=3)
    (tmp_path / "h36m").mkdir()
    write_h36m(tmp_path / "h36m")
    pc, cam = random_poses(2)
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps({"keypoints": B.project_np(pc, cam).tolist(), "camera": cam[0].tolist()}))
    flags = [*TINY, "--batch-size", "16", "--eval-every", "2"]
    for name, data in (("generic", [tmp_path / "generic"]), ("one", [tmp_path / "one.npz", "--memory",
                                                                     tmp_path / "mem.npz"]),
                       ("h36m", [tmp_path / "h36m"])):
        out = tmp_path / "runs" / name
        run_cli("pose_aign.py", *flags, "--steps", "2", "--data", *data, "--out", out, cwd=folder, env=env)
        run_cli("pose_aign.py", *flags, "--steps", "4", "--data", *data, "--resume", out / "ckpt.pt",
                cwd=folder, env=env)
        assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 4
        run_cli("pose_aign.py", "--eval-only", "--resume", out / "ckpt.pt", "--data", *data, "--out",
                out / "ev", "--device", "cpu", cwd=folder, env=env)
        res = json.loads((out / "ev" / "results.json").read_text())
        assert res["eval_only"] and res["step"] == 4 and np.isfinite(res["p_mpjpe"])
        assert res["gt_reproj_px"] <= 0.5 and np.isfinite(res["reproj_px"])  # cameras (and H36M's lens) right
    run_cli("pose_aign.py", "--predict", kp, "--resume", out / "ckpt.pt", "--out", out / "pr", "--device", "cpu",
            cwd=folder, env=env)  # (the input format of --predict does not depend on the training data)
    assert np.load(out / "pr" / "predictions.npz")["poses_3d"].shape == (len(pc), 17, 3)
    assert set(os.listdir(folder)) <= {"common.py", "pose_aign.py", "__pycache__"}  # nothing else was needed
    proc = run_cli("pose_aign.py", "--steps", "1", "--out", tmp_path / "nodata", cwd=folder, env=env, check=False)
    one_line_error(proc, "--data")


# ---------------------------------------------------------------------------------------------
# Learning: each training signal moves the metric the way the method says
def test_learning_adversarial_prior_beats_reprojection_only(tmp_path, cache_root):
    """Both start from the same net; after a short run the prior has taught depth (P-MPJPE falls well
    below the flat starting pose) while reprojection alone leaves depth unconstrained."""
    flags = ["--hidden", "256", "--blocks", "2", "--no-progress", "--device", "cpu", "--steps", "400",
             "--eval-every", "400", "--batch-size", "256", "--lambda-adv", "0.01"]
    run_cli("pose_aign.py", *flags, "--out", tmp_path / "aign", timeout=400)
    run_cli("pose_aign.py", *flags[:-2], "--lambda-adv", "0", "--out", tmp_path / "rec", timeout=400)
    aign, rec = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("aign", "rec"))
    assert aign["p_mpjpe"] < 0.8 * rec["p_mpjpe"], (aign["p_mpjpe"], rec["p_mpjpe"])


def test_cli_interrupted_run_resumes_without_losing_or_repeating_steps(tmp_path, cache_root):
    """SIGTERM mid-run: the step in flight finishes, a checkpoint is written, and resuming to N steps
    gives exactly the weights of an uninterrupted N-step run."""
    out = tmp_path / "int"
    flags = [*TINY, "--eval-every", "10"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "pose_aign.py", *flags, "--steps", "100000", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)  # until a first evaluation is logged: the run is in its training loop
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, log
    stopped = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert f"stopped at step {stopped}" in log and 0 < stopped < 100000
    total = stopped + 5
    run_cli("pose_aign.py", *flags, "--steps", total, "--resume", out / "ckpt.pt")
    run_cli("pose_aign.py", *flags, "--steps", total, "--out", tmp_path / "straight")
    a = torch.load(out / "ckpt.pt", weights_only=True)["nets"]["G"]
    b = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)["nets"]["G"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    after = [s for s in range(stopped + 1, total + 1) if s % 10 == 0 or s == total]  # evaluations due
    assert steps == sorted(set(steps)) and steps[steps.index(stopped) + 1:] == after  # none lost or repeated


def test_cli_torchrun_sigterm_to_one_rank_stops_both(tmp_path, cache_root):
    """SIGTERM reaching only rank 1: both ranks stop at the same step, rank 0 writes the checkpoint,
    the run exits cleanly (no rank left waiting in a collective) and resuming continues from there."""
    out = tmp_path / "ddp_stop"
    flags = [*TINY, "--eval-every", "10", "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "pose_aign.py"]
    proc = subprocess.Popen([*cmd, *map(str, flags), "--steps", "100000"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rank1, deadline = None, time.time() + 120
    while rank1 is None and time.time() < deadline:
        time.sleep(0.5)
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            for pid in open(f"/proc/{proc.pid}/task/{task}/children").read().split():
                if b"RANK=1\0" in open(f"/proc/{pid}/environ", "rb").read() and (out / "metrics.jsonl").exists():
                    rank1 = int(pid)  # found, and both are in the training loop (a first evaluation is logged)
    assert rank1, "rank 1 not found"
    os.kill(rank1, signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, log[-3000:]
    stopped = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert f"stopped at step {stopped}" in log and 10 <= stopped < 100000
    run_cli("pose_aign.py", *flags, "--steps", stopped + 2, "--resume", out / "ckpt.pt", torchrun_nproc=2,
            timeout=240)
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == stopped + 2
