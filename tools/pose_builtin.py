"""The built-in dataset of pose_aign.py: synthetic mocap on the H36M-17 skeleton plus real CMU poses,
seen by random perspective cameras, written as a generic folder (train/val/test/memory.npz) that
pose_aign.py then reads with its ordinary folder loader. pose_aign.py calls build() through
common.builtin_dataset on first use (about 1 s); to write a copy somewhere else:

    python3 tools/pose_builtin.py OUT_DIR [--wide N] [--hang N] [--overhead N]   # N clips per subject:
        # across the joint-angle space / hanging from a bar / fitted clips with the arms overhead (default 4)

It never imports pose_aign.py: the few skeleton constants it needs are copied here.
"""
import argparse
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
MOTIONS = ["walk", "run", "sit", "squat", "wave", "bend", "reach"]
WIDE = 0  # default clips per subject from wide_clip (the anatomical joint-angle space; build(wide=...))
HANG = 0  # default clips per subject of the scripted 'hang' motion (build(hang=...))
OVERHEAD = 4  # default clips per subject from overhead_clip (arms reaching overhead; build(overhead=...)); chosen
# on validation in issue 13's eighth session (data/pose_s8/RULE.md): 0 before, 2, 8 and 2 + wide 8 tried


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
    elif kind == "reach":  # one or both arms up/forward/out to grab something, leaning and twisting into it
        d, sides = 0.5 - 0.5 * c, ["r", "l"] if rng.random() < 0.4 else [rng.choice(["r", "l"])]
        for side in sides:
            a[f"{side}_sh_flex"], a[f"{side}_sh_abd"] = u(60, 175) * d, z + u(-10, 60)
            a[f"{side}_elbow"] = u(0, 40) * (1 - d) + u(0, 20)
        a["spine_flex"], a["spine_side"], a["spine_twist"] = u(-15, 40) * d, u(-20, 20) * d, u(-30, 30) * d
        a["r_hip_flex"] = a["l_hip_flex"] = u(0, 50) * d
        a["r_knee"], a["l_knee"] = u(0, 60) * d, u(0, 60) * d
    elif kind == "hang":  # from a bar overhead: both arms up, pull-ups, legs hanging or in an L-sit, swinging
        pull, lsit = 0.5 - 0.5 * c, rng.random() < 0.5
        for side in "rl":
            a[f"{side}_sh_flex"], a[f"{side}_sh_abd"] = u(150, 178) + u(0, 10) * s, z + u(-5, 30)
            a[f"{side}_elbow"] = u(0, 30) + u(0, 90) * pull
            a[f"{side}_hip_flex"] = (u(60, 100) if lsit else u(0, 25)) + u(5, 25) * s
            a[f"{side}_knee"] = (u(0, 25) if lsit else u(0, 90)) + slow(10)
            a[f"{side}_hip_abd"] = z + u(0, 25)
        a["spine_flex"] = u(-15, 15) + u(0, 10) * s
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


# ----------------------------------------------------------------------------------------------
# The fitted sampler: local joint rotations (axis-angle) fitted to the real CMU poses, sampled as
# smooth correlated trajectories within joint limits, then forward kinematics on the subject's bones.
ROTATED = [0, 1, 2, 4, 5, 7, 8, 9, 11, 12, 14, 15]        # joints whose rotation moves a child bone
CHILDREN = {j: [c for c in range(NJ) if PARENTS[c] == j] for j in ROTATED}
HINGES = {2: (0, 150), 5: (0, 150), 12: (-150, 0), 15: (-150, 0)}  # knees bend back (+x), elbows forward
LIMITS = {1: 120, 4: 120, 7: 45, 8: 40, 9: 60, 11: 170, 14: 170}    # largest rotation (deg) of the others


def rotvec_matrix(v):
    """(..., 3) axis-angle (radians) -> (..., 3, 3) rotations (Rodrigues)."""
    a = np.linalg.norm(v, axis=-1, keepdims=True)
    k = v / np.maximum(a, 1e-12)
    K = np.zeros(v.shape + (3,))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - np.swapaxes(K, -1, -2)
    a = a[..., None]
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def matrix_rotvec(R):
    """(..., 3, 3) rotations -> (..., 3) axis-angle (radians)."""
    a = np.arccos(np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1, 1))[..., None]
    w = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    return w * a / np.maximum(2 * np.sin(a), 1e-9)


def kabsch(A, Bs):
    """Rest directions A (k,3) and observed Bs (N,k,3) -> rotations R (N,3,3) with R A_i ~ B_i."""
    U, _, Vt = np.linalg.svd(np.einsum("nki,kj->nij", Bs, A))
    d = np.sign(np.linalg.det(U @ Vt))
    return U @ (np.eye(3) * np.stack([np.ones_like(d), np.ones_like(d), d], -1)[:, None]) @ Vt


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-9)


def shortest_rotvec(a, b):
    """Rest direction a (3,), unit targets b (N,3) -> (N,3) axis-angle of the shortest rotation a -> b."""
    axis = np.cross(a, b)
    return unit(axis) * np.arctan2(np.linalg.norm(axis, axis=-1), b @ a)[:, None]


def fit_rest(poses):
    """Rest directions (17,3) of the fitted sampler: the chains of REST_DIRS, and the rigid pelvis and
    thorax shapes of the real poses (median directions in the pelvis / thorax frame)."""
    rest, dirs = REST_DIRS.copy(), unit(poses[:, 1:] - poses[:, PARENTS[1:]])     # (N,16,3) world
    dirs = np.concatenate([np.zeros_like(dirs[:, :1]), dirs], 1)                   # index = child joint
    for root, up, x_from, kids in ((0, 7, (1, 4), (1, 4, 7)), (8, 8, (14, 11), (9, 11, 14))):
        y = dirs[:, up]
        x = unit(poses[:, x_from[1]] - poses[:, x_from[0]])
        x = unit(x - (x * y).sum(-1, keepdims=True) * y)
        frame = np.stack([x, y, np.cross(x, y)], 1)                                 # (N,3,3) rows
        for c in kids:
            rest[c] = unit(np.median(np.einsum("nij,nj->ni", frame, dirs[:, c]), 0))
    return rest


def inverse_kinematics(poses, rest):
    """(N,17,3) world poses (Y up) -> (N,12,3) local rotations (ROTATED joints; the root's without yaw)."""
    dirs = np.concatenate([np.zeros_like(poses[:, :1]), unit(poses[:, 1:] - poses[:, PARENTS[1:]])], 1)
    rot, out = {}, []
    for j in ROTATED:
        R_par = rot[PARENTS[j]] if j else np.eye(3)
        seen = np.einsum("nji,nkj->nki", np.broadcast_to(R_par, (len(poses), 3, 3)), dirs[:, CHILDREN[j]])
        if len(CHILDREN[j]) > 1:
            local = kabsch(rest[CHILDREN[j]], seen)
        else:  # the shortest rotation (no twist) taking the rest direction to the seen one
            local = rotvec_matrix(shortest_rotvec(rest[CHILDREN[j][0]], seen[:, 0]))
        rot[j] = R_par @ local
        if j == 0:  # keep the tilt, drop the heading: R0 = Ry(yaw) T
            yaw = np.degrees(np.arctan2(local[:, 0, 2], local[:, 2, 2]))
            local = euler_matrix("Y", -yaw) @ local
        out.append(matrix_rotvec(local))
    return np.stack(out, 1)


def forward_kinematics(rv, rest, lengths, yaw_deg):
    """(T,12,3) local rotations (radians), rest (17,3), lengths (17,), yaw (T,) -> (T,17,3), Y up."""
    T = len(rv)
    local = {j: rotvec_matrix(rv[:, i]) for i, j in enumerate(ROTATED)}
    local[0] = euler_matrix("Y", yaw_deg) @ local[0]
    rot, pos = {0: local[0]}, np.zeros((T, NJ, 3))
    for j in range(1, NJ):
        p = PARENTS[j]
        pos[:, j] = pos[:, p] + rot[p] @ (lengths[j] * rest[j])
        rot[j] = rot[p] @ local[j] if j in local else rot[p]
    return pos


def fit_sampler(poses, clusters=6, seed=0):
    """A Gaussian mixture over the local rotations of the real poses: k-means, then each cluster's
    mean and covariance (plus (4 deg)^2 on the diagonal)."""
    rest = fit_rest(poses)
    X = inverse_kinematics(poses, rest).reshape(len(poses), -1)                      # (N,36)
    rng = np.random.default_rng(seed)
    mu = X[rng.choice(len(X), clusters, replace=False)]
    for _ in range(30):
        lab = np.argmin(((X[:, None] - mu[None]) ** 2).sum(-1), 1)
        mu = np.stack([X[lab == k].mean(0) if (lab == k).any() else mu[k] for k in range(clusters)])
    chol = [np.linalg.cholesky(np.cov(X[lab == k].T) + np.radians(4) ** 2 * np.eye(X.shape[1]))
            for k in range(clusters)]
    return {"rest": rest, "mu": mu, "chol": np.stack(chol), "weight": np.bincount(lab, minlength=clusters) / len(X)}


def smooth_noise(T, dims, rng, lo=0.05, hi=0.6, waves=3):
    """(T, dims) smooth unit-variance noise at 25 fps: sums of `waves` sinusoids of random frequency (Hz)."""
    t = np.arange(T)[:, None, None] / 25.0
    f, ph = rng.uniform(lo, hi, (1, dims, waves)), rng.uniform(0, 2 * np.pi, (1, dims, waves))
    return np.sqrt(2.0 / waves) * np.sin(2 * np.pi * f * t + ph).sum(-1)


def drift(T, rng):
    """(T,1) weights 0 -> 1: a smooth (2 s) change at a random time of the clip."""
    w = np.clip((np.arange(T) / 25.0 - rng.uniform(0, T / 25.0)) / 2.0 + 0.5, 0, 1)[:, None]
    return w * w * (3 - 2 * w)                                                               # smoothstep


def within_limits(rv):
    """(T,12,3) local rotations -> the same with hinges on their one axis and range, others capped."""
    for i, j in enumerate(ROTATED):
        if j in HINGES:  # one axis only, within the hinge's range
            lo, hi = np.radians(HINGES[j])
            rv[:, i] = np.clip(rv[:, i, :1], lo, hi) * np.eye(3)[0]
        elif j in LIMITS:
            a = np.linalg.norm(rv[:, i], axis=-1, keepdims=True)
            rv[:, i] *= np.minimum(1.0, np.radians(LIMITS[j]) / np.maximum(a, 1e-9))
    return rv


def sample_clip(model, T, lengths, rng, widen=1.5, lying=False):
    """One smooth clip (T,17,3) from the fitted mixture: drifting from one cluster's mean to another's,
    correlated wobble widened `widen` times, joint limits enforced; lying: the body tipped 60-100 deg
    about a horizontal axis (on the back, front or side)."""
    k0, k1 = rng.choice(len(model["mu"]), 2, p=model["weight"])
    w = drift(T, rng)
    x = (1 - w) * model["mu"][k0] + w * model["mu"][k1] + widen * smooth_noise(T, 36, rng) @ model["chol"][k0].T
    rv = within_limits(x.reshape(T, len(ROTATED), 3))
    if lying:
        axis = rng.uniform(0, 2 * np.pi)
        rv[:, 0] = np.radians(rng.uniform(60, 100)) * np.array([np.cos(axis), 0, np.sin(axis)]) + 0.05 * smooth_noise(T, 3, rng)
    yaw = rng.uniform(0, 360) + 30 * smooth_noise(T, 1, rng)[:, 0]
    return forward_kinematics(rv, model["rest"], lengths, yaw)


# The limbs' anatomical ranges for wide_clip, degrees: (joint, its side: +1 left, -1 right, elevation of the
# bone from hanging down (lo, hi), azimuth from forward towards its own side (lo, hi)); arms reach from
# across the chest to behind the shoulder line and up overhead, legs forward, sideways and a little back.
# Pairs (left, right): in a clip with bilateral limbs the right one takes the left one's targets +- 15 deg.
LIMB_RANGES = [(11, 1, (0, 175), (-30, 120)), (14, -1, (0, 175), (-30, 120)),
               (4, 1, (0, 110), (-20, 70)), (1, -1, (0, 110), (-20, 70))]
BACK_LEG = (0, 30)                                 # elevation of a leg swung back (azimuth 150-210), 1 in 5
BILATERAL = 0.5                                    # the share of wide clips whose limbs move in pairs
KEYS = 5                                           # targets per limb and clip (one every 2.5 s)


def keyframe_weights(T, K):
    """(T, K) weights blending K keyframes spread evenly over T frames, smoothstep between neighbours."""
    x = np.clip(np.linspace(0, K - 1, T)[:, None] - np.arange(K)[None], -1, 1)                # (T,K)
    w = 1 - np.abs(x)
    return np.clip(w, 0, 1) ** 2 * (3 - 2 * np.clip(w, 0, 1))


def keyed_component(model, T, rng, widen, keys):
    """A fitted mixture component's mean pose with its correlated wobble (widened) -> rotation vectors
    rv (T, R, 3), the wobble alone (T, R, 3), and (T, keys) weights blending `keys` keyframes (rows sum to 1)."""
    k = rng.choice(len(model["mu"]), p=model["weight"])
    wobble = (widen * smooth_noise(T, 36, rng) @ model["chol"][k].T).reshape(T, len(ROTATED), 3)
    w = keyframe_weights(T, keys)
    return model["mu"][k].reshape(len(ROTATED), 3) + wobble, wobble, w / w.sum(1, keepdims=True)


def aim(model, rv, wobble, joint, side, el, az):
    """Point the bone below `joint` (a shoulder or hip; side +1 left, -1 right) at elevation el from hanging
    and azimuth az from forward to its own side, (T,) radians, plus its wobble: writes rv in place."""
    target = np.stack([side * np.sin(el) * np.sin(az), -np.cos(el), np.sin(el) * np.cos(az)], -1)  # (T,3)
    rv[:, ROTATED.index(joint)] = (shortest_rotvec(model["rest"][CHILDREN[joint][0]], target)
                                   + wobble[:, ROTATED.index(joint)])


def turning_fk(model, rv, lengths, T, rng):
    """Joint limits, then forward kinematics with a heading that turns slowly (+-30 deg) about a random one."""
    yaw = rng.uniform(0, 360) + 30 * smooth_noise(T, 1, rng)[:, 0]
    return forward_kinematics(within_limits(rv), model["rest"], lengths, yaw)


def wide_clip(model, T, lengths, rng, widen=1.5, keys=KEYS):
    """A clip across the limbs' anatomical joint-angle space (LIMB_RANGES, elbows and knees 0-150 deg):
    each limb moves smoothly through `keys` uniformly drawn targets (in BILATERAL of the clips the two
    arms and the two legs alike, as in hanging, jumping or sitting with legs out); the trunk comes from
    a fitted mixture component; every joint carries its correlated wobble (widened), limits enforced."""
    rv, wobble, w = keyed_component(model, T, rng, widen, keys)
    bilateral = rng.random() < BILATERAL
    for n, (joint, side, elev, azim) in enumerate(LIMB_RANGES):
        child = CHILDREN[joint][0]
        lo, hi = np.radians(HINGES[child])                                                  # the elbow / knee
        if n % 2 == 0 or not bilateral:  # the left limb, or an independent right one: new targets
            back = (joint in (1, 4)) & (rng.random(keys) < 0.2)                             # (keys,)
            e = np.where(back, rng.uniform(*BACK_LEG, keys), rng.uniform(*elev, keys))
            a = np.where(back, rng.uniform(150, 210, keys), rng.uniform(*azim, keys))
            h = rng.uniform(lo, hi, keys)
        else:  # the right limb of a bilateral clip: the left one's targets, a little off
            off = rng.uniform(-15, 15, (3, keys))
            e, a, h = e + off[0], a + off[1], h + np.radians(off[2])
        aim(model, rv, wobble, joint, side, np.radians(w @ e), np.radians(w @ a))
        rv[:, ROTATED.index(child), 0] = w @ h + wobble[:, ROTATED.index(child), 0]
    return turning_fk(model, rv, lengths, T, rng)


def overhead_clip(model, T, lengths, rng, widen=1.5, keys=KEYS):
    """A fitted clip whose arms (one or both) reach overhead: each shoulder moves through `keys` targets at
    100-175 deg from hanging (azimuth -30..90 deg from forward to its own side), elbows 0-120 deg; legs,
    trunk and the correlated wobble from a fitted mixture component, limits enforced."""
    rv, wobble, w = keyed_component(model, T, rng, widen, keys)
    arms = [(11, 1), (14, -1)] if rng.random() < 0.6 else [[(11, 1), (14, -1)][rng.integers(2)]]
    for joint, side in arms:
        el, az = np.radians(w @ rng.uniform(100, 175, keys)), np.radians(w @ rng.uniform(-30, 90, keys))
        aim(model, rv, wobble, joint, side, el, az)
        rv[:, ROTATED.index(CHILDREN[joint][0]), 0] = -np.radians(w @ rng.uniform(0, 120, keys))
    return turning_fk(model, rv, lengths, T, rng)


def random_cameras(n, rng):
    """n random perspective cameras: (n, 3, 3) world->camera rotations, (n, 3) root positions in the
    camera frame (metres), (n, 4) intrinsics fx, fy, cx, cy for a 1000x1000 image."""
    yaw, el = rng.uniform(0, 360, n), rng.uniform(-10, 40, n)   # camera below (< 0) to well above the person
    dist = rng.uniform(3.0, 9.0, n)
    # world (X left, Y up, Z forward) -> camera (x right, y down, z forward) facing the subject,
    # then the subject's yaw and the camera's elevation (camera above looks down)
    flip = np.diag([1.0, -1.0, -1.0])
    R = euler_matrix("X", el) @ flip @ euler_matrix("Y", yaw)
    root = np.stack([dist * rng.uniform(-0.12, 0.12, n), dist * rng.uniform(-0.05, 0.12, n), dist], 1)
    f = rng.uniform(700, 1800, n)
    cam = np.stack([f, f * rng.uniform(0.995, 1.005, n), 500 + rng.normal(0, 8, n), 500 + rng.normal(0, 8, n)], 1)
    return R, root, cam


def project_np(p_cam, cam):
    """(N, J, 3) camera-frame points, (N, 4) intrinsics -> (N, J, 2) pixels."""
    return p_cam[..., :2] / p_cam[..., 2:3] * cam[:, None, :2] + cam[:, None, 2:]


def seen(world, subj, act, rng, T=250):
    """World poses (N,17,3) of clips of T frames seen by one random camera per clip -> camera-frame 3D
    (N,17,3), 2D pixels (N,17,2), intrinsics (N,4)."""
    R, root, cam = random_cameras(len(world), rng)
    # one camera per clip: reuse the clip's first draw for all its frames
    clip_id = np.concatenate([[0], np.cumsum((subj[1:] != subj[:-1]) | (act[1:] != act[:-1])
                                             | (np.arange(1, len(act)) % T == 0))])
    first = np.searchsorted(clip_id, clip_id)
    R, root, cam = R[first], root[first], cam[first]
    pc = np.einsum("nij,nkj->nki", R, world - world[:, :1]) + root[:, None]
    return pc, project_np(pc, cam), cam


def build(folder, seed=1234, wide=WIDE, hang=HANG, overhead=OVERHEAD):
    """Write the built-in dataset: train/val/test.npz (2D + cameras + 3D + subject/action) and
    memory.npz (3D only). Each synthetic subject has its own bones and clips of 250 frames: the 7
    scripted motions (MOTIONS), 4 from the sampler fitted to the real clip 01_01 ('fitted'), 1
    lying on the floor ('lying'), `wide` across the limbs' joint-angle ranges ('wide'), `hang` hanging
    from a bar ('hang') and `overhead` (default 4) fitted clips with the arms overhead ('overhead'); these
    three each from their own random stream after the others, so the rest of the data is as without them.
    Disjoint roles: S1-S6 give the 2D inputs, S7-S9 the memory, S10 validation, S11-S12 test; the
    real CMU poses: clip 01_01 memory, the first 40% of clip 01_03 validation, the rest of it test
    (action 'cmu')."""
    cmu = common.load_npz(os.path.join(ROOT, "data", "cmu_h36m17.npz"), ["poses_3d", "clip"],
                          "the shipped CMU poses (rebuild with tools/bvh_to_memory.py, see its docstring)")
    lengths0 = bone_lengths(cmu["poses_3d"])
    real = {c: cmu["poses_3d"][cmu["clip"] == c].astype(np.float64) for c in ("01_01", "01_03")}
    cut = int(0.4 * len(real["01_03"]))
    real = {"memory": real["01_01"], "val": real["01_03"][:cut], "test": real["01_03"][cut:]}
    model = fit_sampler(real["memory"])
    rng, rng_wide, rng_hang, rng_ovh = (np.random.default_rng(seed + i) for i in range(4))
    streams = {"base": rng, "wide": rng_wide, "hang": rng_hang, "overhead": rng_ovh}
    roles = {"train": range(1, 7), "memory": range(7, 10), "val": [10], "test": [11, 12]}
    sym = [0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13]  # left <-> right twin of each bone
    out, T = {}, 250
    for role, subjects in roles.items():
        parts = {k: ([], [], []) for k in streams}                                 # poses, subject, action
        for s in subjects:
            jitter = rng.normal(1.0, 0.04, NJ)
            lengths = lengths0 * rng.uniform(0.88, 1.12) * (jitter + jitter[sym]) / 2  # symmetric body
            clips = [(k, synth_pose_fk(synth_motion(k, T, rng), lengths, rng.uniform(0, 360))) for k in MOTIONS]
            clips += [("fitted", sample_clip(model, T, lengths, rng)) for _ in range(4)]
            clips += [("lying", sample_clip(model, T, lengths, rng, lying=True))]
            clips += [("wide", wide_clip(model, T, lengths, rng_wide)) for _ in range(wide)]
            clips += [("hang", synth_pose_fk(synth_motion("hang", T, rng_hang), lengths, rng_hang.uniform(0, 360)))
                      for _ in range(hang)]
            clips += [("overhead", overhead_clip(model, T, lengths, rng_ovh)) for _ in range(overhead)]
            for kind, pose in clips:
                poses, subj, act = parts[kind if kind in streams else "base"]
                poses.append(pose); subj += [f"S{s}"] * T; act += [kind] * T
        if role != "train":
            poses, subj, act = parts["base"]
            poses.append(real[role]); subj += ["CMU01"] * len(real[role]); act += ["cmu"] * len(real[role])
        out[role] = {k: (np.concatenate(p).astype(np.float32), np.array(sj), np.array(a))
                     for k, (p, sj, a) in parts.items() if p}
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, "memory.npz"),
                        poses_3d=np.concatenate([p[0] for p in out["memory"].values()]))
    for role in ("train", "val", "test"):
        views = 2 if role == "train" else 1  # each clip is seen by its own random camera(s)
        rows = [(seen(*part, streams[k]), part[1], part[2])
                for _ in range(views) for k, part in out[role].items()]
        cat = lambda f: np.concatenate([f(r) for r in rows])  # noqa: E731
        np.savez_compressed(os.path.join(folder, f"{role}.npz"), poses_2d=cat(lambda r: r[0][1]).astype(np.float32),
                            camera=cat(lambda r: r[0][2]).astype(np.float32),
                            poses_3d=cat(lambda r: r[0][0]).astype(np.float32),
                            subject=cat(lambda r: r[1]), action=cat(lambda r: r[2]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", help="folder to write train/val/test/memory.npz into")
    ap.add_argument("--wide", type=int, default=WIDE, help=f"wide_clip clips per subject (default: {WIDE})")
    ap.add_argument("--hang", type=int, default=HANG, help=f"'hang' clips per subject (default: {HANG})")
    ap.add_argument("--overhead", type=int, default=OVERHEAD,
                    help=f"overhead_clip clips per subject (default: {OVERHEAD})")
    a = ap.parse_args()
    build(a.out_dir, wide=a.wide, hang=a.hang, overhead=a.overhead)
    print(f"wrote {a.out_dir}")
