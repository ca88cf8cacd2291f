"""The built-in dataset of pose_aign.py: synthetic mocap on the H36M-17 skeleton plus real CMU poses,
seen by random perspective cameras, written as a generic folder (train/val/test/memory.npz) that
pose_aign.py then reads with its ordinary folder loader. pose_aign.py calls build() through
common.builtin_dataset on first use (about 1 s); to write a copy somewhere else:

    python3 tools/pose_builtin.py OUT_DIR

It never imports pose_aign.py: the few skeleton constants it needs are copied here.
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
from tools.bvh_to_memory import euler_matrix  # noqa: E402  (the BVH reader's rotations)

NJ = 17  # H36M-17 (VideoPose3D order), as in pose_aign.py
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15]


# Rest pose in a body frame: Y up, X = the subject's left, Z = forward. Unit bone directions; the
# lengths come from the real CMU poses shipped in data/cmu_h36m17.npz (median over frames).
REST_DIRS = np.array([[0, 0, 0], [-1, 0, 0], [0, -1, 0], [0, -1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0],
                      [0, 1, 0], [0, 1, 0], [0, 0.8, 0.6], [0, 0.9, -0.45], [1, -0.15, 0], [0, -1, 0],
                      [0, -1, 0], [-1, -0.15, 0], [0, -1, 0], [0, -1, 0]], dtype=np.float64)
REST_DIRS[1:] /= np.linalg.norm(REST_DIRS[1:], axis=1, keepdims=True)
MOTIONS = ["walk", "run", "sit", "squat", "wave", "bend"]


def bone_lengths(poses):
    """(N, 17, 3) -> (17,) median bone length to the parent (0 for the root)."""
    par = np.array(PARENTS[1:])
    return np.concatenate([[0.0], np.median(np.linalg.norm(poses[:, 1:] - poses[:, par], axis=-1), 0)])


def synth_motion(kind, T, rng):
    """Joint angles (degrees) of one motion clip: dict name -> (T,) arrays. Ranges are set by hand
    within anatomical limits; each clip draws its own speed, amplitudes and phase."""
    t = np.arange(T) / 25.0
    ph = 2 * np.pi * rng.uniform(0.6, 1.4) * (1.6 if kind == "run" else 1.0) * t + rng.uniform(0, 2 * np.pi)
    s, c, u = np.sin(ph), np.cos(ph), lambda a, b: rng.uniform(a, b)
    slow = lambda amp: amp * np.sin(2 * np.pi * u(0.05, 0.3) * t + u(0, 6.3))  # smooth drift
    z = np.zeros(T)
    a = {k: z.copy() for k in ["r_hip_flex", "l_hip_flex", "r_hip_abd", "l_hip_abd", "r_knee", "l_knee",
                                "spine_flex", "spine_twist", "spine_side", "neck_flex", "neck_yaw",
                                "r_sh_flex", "l_sh_flex", "r_sh_abd", "l_sh_abd", "r_elbow", "l_elbow"]}
    if kind in ("walk", "run"):
        A, K, B = (u(15, 30), u(40, 65), u(15, 35)) if kind == "walk" else (u(35, 55), u(70, 110), u(30, 50))
        a["r_hip_flex"], a["l_hip_flex"] = A * s, -A * s
        a["r_knee"] = 5 + K * np.clip(np.sin(ph - 1.2), 0, None)
        a["l_knee"] = 5 + K * np.clip(np.sin(ph - 1.2 + np.pi), 0, None)
        a["r_sh_flex"], a["l_sh_flex"] = -B * s, B * s
        a["r_elbow"] = a["l_elbow"] = z + (u(10, 30) if kind == "walk" else u(70, 100))
        a["spine_flex"] = z + (u(0, 8) if kind == "walk" else u(8, 20))
        a["spine_twist"] = u(3, 10) * s
    elif kind == "sit":
        a["r_hip_flex"] = a["l_hip_flex"] = z + u(75, 100)
        a["r_hip_flex"] += slow(8); a["l_hip_flex"] += slow(8)
        a["r_knee"], a["l_knee"] = u(70, 110) + slow(10), u(70, 110) + slow(10)
        a["r_hip_abd"], a["l_hip_abd"] = z + u(0, 20), z + u(0, 20)
        a["spine_flex"] = u(-10, 25) + slow(10)
        a["r_sh_flex"], a["l_sh_flex"] = u(10, 45) + slow(20), u(10, 45) + slow(20)
        a["r_elbow"], a["l_elbow"] = u(30, 100) + slow(20), u(30, 100) + slow(20)
    elif kind == "squat":
        d = 0.5 - 0.5 * c
        a["r_hip_flex"] = a["l_hip_flex"] = u(80, 120) * d
        a["r_knee"] = a["l_knee"] = u(100, 140) * d
        a["spine_flex"] = u(20, 45) * d
        a["r_sh_flex"] = a["l_sh_flex"] = u(30, 90) * d
        a["r_hip_abd"], a["l_hip_abd"] = z + u(5, 20), z + u(5, 20)
    elif kind == "wave":
        side = "r" if rng.random() < 0.5 else "l"
        a[f"{side}_sh_abd"] = u(80, 160) + u(5, 20) * s
        a[f"{side}_sh_flex"] = z + u(-10, 40)
        a[f"{side}_elbow"] = u(40, 80) + u(20, 50) * s
        a["spine_side"] = u(-8, 8) + slow(3)
        a["r_knee"], a["l_knee"] = z + u(0, 15), z + u(0, 15)
    elif kind == "bend":
        d = 0.5 - 0.5 * c
        a["spine_flex"] = u(50, 95) * d
        a["r_hip_flex"] = a["l_hip_flex"] = u(10, 40) * d
        a["r_knee"] = a["l_knee"] = u(5, 40) * d
        a["r_sh_flex"] = a["l_sh_flex"] = a["spine_flex"] * u(0.7, 1.1)  # arms hang towards the floor
        a["r_elbow"] = a["l_elbow"] = z + u(5, 30)
    for k in a:  # every joint wobbles a little, so no two clips are alike
        a[k] = a[k] + slow(4.0)
    a["neck_flex"] += u(-15, 20); a["neck_yaw"] += slow(25)
    a["r_sh_abd"] += 8; a["l_sh_abd"] += 8
    return a


def synth_pose_fk(ang, lengths, yaw_deg):
    """Forward kinematics of synth_motion angles on the H36M-17 skeleton -> (T, 17, 3), Y up."""
    T = len(ang["r_knee"])
    Rx, Ry, Rz = (lambda d, ax=ax: euler_matrix(ax, d) for ax in "XYZ")
    local = {j: np.broadcast_to(np.eye(3), (T, 3, 3)) for j in range(NJ)}
    local[0] = Ry(np.full(T, yaw_deg))
    # hips: flexion brings the thigh forward (+Z), abduction outwards; knees bend backwards
    local[1] = Rx(-ang["r_hip_flex"]) @ Rz(-ang["r_hip_abd"])
    local[4] = Rx(-ang["l_hip_flex"]) @ Rz(ang["l_hip_abd"])
    local[2], local[5] = Rx(ang["r_knee"]), Rx(ang["l_knee"])
    local[7] = Rx(ang["spine_flex"] * 0.6) @ Ry(ang["spine_twist"]) @ Rz(ang["spine_side"])
    local[8] = Rx(ang["spine_flex"] * 0.4)
    local[9] = Rx(ang["neck_flex"]) @ Ry(ang["neck_yaw"])
    # shoulders: flexion raises the arm forward, abduction sideways; elbows bend forward
    local[11] = Rz(ang["l_sh_abd"]) @ Rx(-ang["l_sh_flex"])
    local[14] = Rz(-ang["r_sh_abd"]) @ Rx(-ang["r_sh_flex"])
    local[12], local[15] = Rx(-ang["l_elbow"]), Rx(-ang["r_elbow"])
    rot, pos = [None] * NJ, np.zeros((T, NJ, 3))
    for j in range(NJ):
        p = PARENTS[j]
        if p < 0:
            rot[j] = local[j]
            continue
        # bone j hangs from its parent's frame: p_j = p_parent + R_parent (length_j * dir_j)
        pos[:, j] = pos[:, p] + rot[p] @ (lengths[j] * REST_DIRS[j])
        rot[j] = rot[p] @ local[j]
    return pos


def random_cameras(n, rng):
    """n random perspective cameras: (n, 3, 3) world->camera rotations, (n, 3) root positions in the
    camera frame (metres), (n, 4) intrinsics fx, fy, cx, cy for a 1000x1000 image."""
    yaw, el = rng.uniform(0, 360, n), rng.uniform(-5, 30, n)
    dist = rng.uniform(3.5, 7.0, n)
    # world (X left, Y up, Z forward) -> camera (x right, y down, z forward) facing the subject,
    # then the subject's yaw and the camera's elevation (camera above looks down)
    flip = np.diag([1.0, -1.0, -1.0])
    R = euler_matrix("X", el) @ flip @ euler_matrix("Y", yaw)
    root = np.stack([dist * rng.uniform(-0.12, 0.12, n), dist * rng.uniform(-0.05, 0.12, n), dist], 1)
    f = rng.uniform(900, 1600, n)
    cam = np.stack([f, f * rng.uniform(0.995, 1.005, n), 500 + rng.normal(0, 8, n), 500 + rng.normal(0, 8, n)], 1)
    return R, root, cam


def project_np(p_cam, cam):
    """(N, J, 3) camera-frame points, (N, 4) intrinsics -> (N, J, 2) pixels."""
    return p_cam[..., :2] / p_cam[..., 2:3] * cam[:, None, :2] + cam[:, None, 2:]


def build(folder, seed=1234):
    """Write the built-in dataset: train/val/test.npz (2D + cameras + 3D + subject/action) and
    memory.npz (3D only). Synthetic subjects are split disjointly: S1-S6 give the 2D inputs, S7-S9 the
    memory, S10 validation, S11-S12 test; the real CMU clips: 01_01 memory, 01_03 test."""
    cmu = common.load_npz(os.path.join(ROOT, "data", "cmu_h36m17.npz"), ["poses_3d", "clip"],
                          "the shipped CMU poses (rebuild with tools/bvh_to_memory.py, see its docstring)")
    lengths0 = bone_lengths(cmu["poses_3d"])
    rng = np.random.default_rng(seed)
    roles = {"train": range(1, 7), "memory": range(7, 10), "val": [10], "test": [11, 12]}
    sym = [0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13]  # left <-> right twin of each bone
    out = {}
    for role, subjects in roles.items():
        poses, subj, act = [], [], []
        for s in subjects:
            jitter = rng.normal(1.0, 0.04, NJ)
            lengths = lengths0 * rng.uniform(0.88, 1.12) * (jitter + jitter[sym]) / 2  # symmetric body
            for kind in MOTIONS:
                for _ in range(2):
                    T = 250
                    pose = synth_pose_fk(synth_motion(kind, T, rng), lengths, rng.uniform(0, 360))
                    poses.append(pose); subj += [f"S{s}"] * T; act += [kind] * T
        if role in ("memory", "test"):
            clip = "01_01" if role == "memory" else "01_03"
            real = cmu["poses_3d"][cmu["clip"] == clip]
            poses.append(real); subj += ["CMU01"] * len(real); act += ["cmu"] * len(real)
        out[role] = (np.concatenate(poses).astype(np.float32), np.array(subj), np.array(act))
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, "memory.npz"), poses_3d=out["memory"][0])
    for role in ("train", "val", "test"):
        world, subj, act = out[role]
        views = 2 if role == "train" else 1  # each clip is seen by its own random camera(s)
        x2d, cams, p3d, S, A = [], [], [], [], []
        for _ in range(views):
            R, root, cam = random_cameras(len(world), rng)
            # one camera per 250-frame clip: reuse the clip's first draw for all its frames
            clip_id = np.concatenate([[0], np.cumsum((subj[1:] != subj[:-1]) | (act[1:] != act[:-1])
                                                     | (np.arange(1, len(act)) % 250 == 0))])
            first = np.searchsorted(clip_id, clip_id)
            R, root, cam = R[first], root[first], cam[first]
            pc = np.einsum("nij,nkj->nki", R, world - world[:, :1]) + root[:, None]
            x2d.append(project_np(pc, cam)); cams.append(cam); p3d.append(pc); S.append(subj); A.append(act)
        np.savez_compressed(os.path.join(folder, f"{role}.npz"), poses_2d=np.concatenate(x2d).astype(np.float32),
                            camera=np.concatenate(cams).astype(np.float32),
                            poses_3d=np.concatenate(p3d).astype(np.float32),
                            subject=np.concatenate(S), action=np.concatenate(A))


if __name__ == "__main__":
    build(sys.argv[1])
    print(f"wrote {sys.argv[1]}")
