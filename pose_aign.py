"""AIGN 2D-to-3D human pose lifting (Tung et al., ICCV 2017, section "3D human pose estimation").

Learns G: 2D keypoints -> 3D pose from 2D observations plus an *unpaired* memory of 3D poses:
    L_G = lambda_rec * ||P(G(x)) - x||^2 + lambda_adv * adv(D(G(x))) [+ lambda_sup * ||G(x) - y||^2 on paired x]
where P is a hand-written perspective camera and D tells memory poses from predicted ones.

Results card (built-in test split, mm, mean ± std over seeds 0-2, 3000 steps, batch 256; full table,
commands and hardware in README.md; runs on the 16-core Xeon host of an H100 machine, 1 thread each):
    setting                                   P-MPJPE        MPJPE
    AIGN, unpaired (default)                  53.5 ± 0.8     86.9 ± 1.0
    AIGN + 5% paired                          52.1 ± 0.4     80.0 ± 0.7
    supervised-only, same 5%                  70.4 ± 0.7    113.0 ± 2.3
    reprojection-only (no prior)             112.9 ± 0.0    (depth unconstrained)
    supervised, 100% paired (bound)           42.0 ± 0.7     72.2 ± 5.0
    default run (seed 0): 108 s on 2 CPU cores (AMD EPYC, torch 2.13.0+cpu), 57 s on one H100.

Usage:
    python3 pose_aign.py                                   # unpaired AIGN on the built-in data
    python3 pose_aign.py --data DIR_WITH_VIDEOPOSE3D_NPZ   # Human3.6M (S1,S5-S8 / S9,S11)
    python3 pose_aign.py --data poses.npz --prior cmu_bvh/ # your own 2D keypoints + a BVH memory
    python3 pose_aign.py --eval-only --resume runs/X/ckpt.pt --data ...
    python3 pose_aign.py --predict keypoints.json --resume runs/X/ckpt.pt
    torchrun --nproc_per_node 2 pose_aign.py --device cpu
"""
import argparse
import glob
import io
import json
import os
import pickle
import shutil
import time
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import InputError

HERE = os.path.dirname(os.path.abspath(__file__))


# ==============================================================================================
# Args
def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, steps=3000, batch_size=256, lr=2e-4, eval_every=1000)
    p.add_argument("--prior", default=None,
                   help="3D memory: npz with poses_3d (N,17,3) metres, or a folder of BVH files "
                        "(default: the dataset's own memory; data/cmu_h36m17.npz for a plain npz)")
    p.add_argument("--keypoints", default="gt",
                   help="Human3.6M 2D source: data_2d_h36m_<keypoints>.npz (default: gt)")
    p.add_argument("--paired-frac", type=float, default=0.0,
                   help="fraction of training frames (the first ones, whole sequences) whose 3D pose is "
                        "used as paired supervision (default: 0)")
    p.add_argument("--lambda-rec", type=float, default=1.0, help="reprojection loss weight (default: 1.0)")
    p.add_argument("--lambda-adv", type=float, default=0.01, help="adversarial prior weight (default: 0.01)")
    p.add_argument("--lambda-sup", type=float, default=50.0, help="paired 3D loss weight, on squared metres (default: 50)")
    p.add_argument("--gan", choices=["bce", "lsgan", "wgan-gp"], default="bce",
                   help="adversarial loss: non-saturating BCE (paper), least squares, WGAN-GP (default: bce)")
    p.add_argument("--camera", choices=["perspective", "weak"], default="perspective",
                   help="renderer's camera model (default: perspective)")
    p.add_argument("--hidden", type=int, default=512, help="width of G's residual MLP (default: 512)")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks in G (default: 2)")
    p.add_argument("--noise-2d", type=float, default=0.0,
                   help="std of Gaussian pixel noise added to 2D inputs, train and test (default: 0)")
    p.add_argument("--keypoint-order", choices=["h36m", "coco"], default=None,
                   help="joint order of --predict input (default: the file's 'layout', else h36m)")
    return p.parse_args(argv)


# ==============================================================================================
# Skeleton: Human3.6M 17 joints (VideoPose3D order)
JOINTS = ["pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
          "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"]
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15]
NJ = 17
LEFT = [4, 5, 6, 11, 12, 13]
RIGHT = [1, 2, 3, 14, 15, 16]

# CMU BVH joint -> H36M-17 joint ("<name>_end" is the end site below <name>). CMU's Neck sits on
# Spine1 (zero offset), so the thorax is Neck1, at shoulder height.
CMU_TO_H36M = {"Hips": 0, "RightUpLeg": 1, "RightLeg": 2, "RightFoot": 3, "LeftUpLeg": 4, "LeftLeg": 5,
               "LeftFoot": 6, "Spine1": 7, "Neck1": 8, "Head": 9, "Head_end": 10, "LeftArm": 11,
               "LeftForeArm": 12, "LeftHand": 13, "RightArm": 14, "RightForeArm": 15, "RightHand": 16}
CMU_UNIT_M = 0.0564  # CMU BVH units -> metres (CMU's mocap unit; the shipped subject 01 stands ~1.5 m)

# COCO-17 (detector order) -> H36M-17, for --predict: each H36M joint is the mean of these COCO joints.
COCO_TO_H36M = [[11, 12], [12], [14], [16], [11], [13], [15], [5, 6, 11, 12], [5, 6], [0], [1, 2, 3, 4],
                [5], [7], [9], [6], [8], [10]]

# Human3.6M: the 17 of 32 joints kept, and the public camera constants (from VideoPose3D's
# h36m_dataset.py): intrinsics (fx, fy, cx, cy) per camera; per subject and camera the camera-to-world
# rotation as a quaternion (w, x, y, z) and the camera centre in mm.
H36M_KEEP = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]
H36M_TRAIN, H36M_TEST = ["S1", "S5", "S6", "S7", "S8"], ["S9", "S11"]
H36M_CAMERAS = os.path.join(HERE, "data", "h36m_cameras.json")  # intrinsics; extrinsics per subject


# ==============================================================================================
# Data: BVH mocap reader
def read_bvh(path):
    """Parse a BVH file. Returns (names, parents, offsets (J,3), channels [list of names per joint],
    motion (F, C) float64). End sites are joints named '<parent>_end' with no channels."""
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read BVH file ({e})") from None
    if "HIERARCHY" not in text or "MOTION" not in text:
        raise InputError(f"{path}: not a BVH file (expected HIERARCHY ... MOTION sections)")
    head, motion_text = text.split("MOTION", 1)
    names, parents, offsets, channels, stack = [], [], [], [], []
    tokens = head.split()
    try:
        _parse_hierarchy(tokens, names, parents, offsets, channels, stack)
    except (IndexError, ValueError):
        raise InputError(f"{path}: malformed HIERARCHY after {len(names)} joint(s) (expected ROOT/JOINT/End Site "
                         f"blocks with OFFSET x y z and CHANNELS n ...)") from None
    if any(o is None for o in offsets):
        raise InputError(f"{path}: a joint has no OFFSET in the HIERARCHY")
    lines = [ln for ln in motion_text.strip().splitlines()[2:] if ln.strip()]  # after Frames:, Frame Time:
    n_ch = sum(len(c) for c in channels)
    try:
        motion = np.array([[float(v) for v in ln.split()] for ln in lines], dtype=np.float64)
    except ValueError:
        raise InputError(f"{path}: MOTION section holds non-numeric values or rows of unequal length") from None
    if motion.ndim != 2 or motion.shape[1] != n_ch:
        raise InputError(f"{path}: MOTION rows have {motion.shape[-1] if motion.size else 0} values, "
                         f"the HIERARCHY declares {n_ch} channels")
    return names, parents, np.array(offsets, dtype=np.float64), channels, motion


def _parse_hierarchy(tokens, names, parents, offsets, channels, stack):
    """Fill the joint lists from the HIERARCHY tokens (a small stack machine over { and })."""
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            names.append(tokens[i + 1]); parents.append(stack[-1] if stack else -1)
            offsets.append(None); channels.append([]); i += 2
        elif tok == "End":  # "End Site"
            names.append(names[stack[-1]] + "_end"); parents.append(stack[-1])
            offsets.append(None); channels.append([]); i += 2
        elif tok == "{":
            stack.append(len(names) - 1); i += 1
        elif tok == "}":
            stack.pop(); i += 1
        elif tok == "OFFSET":
            offsets[stack[-1]] = [float(v) for v in tokens[i + 1:i + 4]]; i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1]); channels[stack[-1]] = tokens[i + 2:i + 2 + n]; i += 2 + n
        else:
            i += 1


def euler_matrix(axis, deg):
    """(F,) degrees -> (F, 3, 3) rotation about 'X', 'Y' or 'Z'."""
    a = np.radians(deg)
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    m = {"X": [[o, z, z], [z, c, -s], [z, s, c]], "Y": [[c, z, s], [z, o, z], [-s, z, c]],
         "Z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis]
    return np.moveaxis(np.array(m), [0, 1], [-2, -1])


def bvh_to_h36m(path, stride=1):
    """BVH file -> (F, 17, 3) world positions in metres (Y up), H36M-17 order."""
    names, parents, offsets, channels, motion = read_bvh(path)
    missing = [n for n in CMU_TO_H36M if n not in names]
    if missing:
        raise InputError(f"{path}: skeleton lacks joints {missing}; the CMU-style names needed for "
                         f"H36M-17 are {list(CMU_TO_H36M)} (found {names})")
    motion = motion[::stride]
    F_ = len(motion)
    rot = [None] * len(names)    # (F, 3, 3) global rotations
    pos = [None] * len(names)    # (F, 3) global positions
    col = 0
    for j, (par, chans) in enumerate(zip(parents, channels)):
        local_r, local_t = np.broadcast_to(np.eye(3), (F_, 3, 3)), offsets[j][None]
        for c in chans:  # each joint's own channel order, intrinsic Euler: R = R_c1 R_c2 R_c3
            if c.endswith("rotation"):
                local_r = local_r @ euler_matrix(c[0].upper(), motion[:, col])
            elif c.endswith("position"):
                local_t = local_t + np.eye(3)["XYZ".index(c[0].upper())] * motion[:, col:col + 1]
            col += 1
        if par < 0:
            rot[j], pos[j] = local_r, np.broadcast_to(local_t, (F_, 3))
        else:  # p_j = p_parent + R_parent offset_j;  R_j = R_parent R_local
            pos[j] = pos[par] + np.einsum("fij,fj->fi", rot[par], np.broadcast_to(local_t, (F_, 3)))
            rot[j] = rot[par] @ local_r
    out = np.zeros((F_, NJ, 3))
    for name, k in CMU_TO_H36M.items():
        out[:, k] = pos[names.index(name)]
    return (out * CMU_UNIT_M).astype(np.float32)


# ==============================================================================================
# Data: loaders. Every source ends as the same split dicts:
#   {"x2d": (N,17,2) pixels, NaN = missing joint; "cam": (N,4) fx, fy, cx, cy; "y3d": (N,17,3) metres in
#    camera coordinates or None; "action": (N,) str}
# plus "memory": (M,17,3) 3D poses (any frame; the discriminator canonicalises rotation).
NPZ_LAYOUT = ("poses_2d (N,17,2) pixels, camera (4,) or (N,4) = fx fy cx cy; optional poses_3d (N,17,3) "
              "metres in camera coordinates, subject/action (N,) strings; H36M-17 joint order")


def check_array(arr, path, key, shape):
    """Check a numeric array against a shape pattern (None = any size) with a clear error."""
    ok = arr.dtype.kind in "fiu" and arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{path}: '{key}' has shape {arr.shape} and dtype {arr.dtype}; expected numbers of "
                         f"shape {want} ({NPZ_LAYOUT})")
    return arr.astype(np.float32)


def make_split(path, x2d, cam, y3d=None, action=None):
    n = len(x2d)
    if cam.ndim == 1:
        cam = np.broadcast_to(cam, (n, 4))
    if len(cam) != n or (y3d is not None and len(y3d) != n) or (action is not None and len(action) != n):
        raise InputError(f"{path}: arrays disagree on the number of frames N ({NPZ_LAYOUT})")
    if not (np.all(cam[:, :2] > 0) and np.all(np.isfinite(cam))):
        raise InputError(f"{path}: camera focal lengths must be finite and positive (fx fy cx cy)")
    dead = np.where(~np.isfinite(x2d).all(-1).any(-1))[0]
    if len(dead):
        raise InputError(f"{path}: {len(dead)} frame(s) have no valid 2D joint (all NaN), e.g. frame {dead[0]}; "
                         f"drop them or mark only the missing joints as NaN")
    if y3d is not None and not np.all(np.isfinite(y3d)):
        raise InputError(f"{path}: poses_3d holds NaN/inf values")
    action = np.array(["all"] * n) if action is None else np.asarray(action).astype(str)
    return {"x2d": np.ascontiguousarray(x2d), "cam": np.ascontiguousarray(cam, dtype=np.float32),
            "y3d": y3d, "action": action}


def load_pose_npz(path):
    """Generic npz (see NPZ_LAYOUT) -> (split, subject array or None)."""
    z = common.load_npz(path, ["poses_2d", "camera"], NPZ_LAYOUT)
    x2d = check_array(z["poses_2d"], path, "poses_2d", (None, NJ, 2))
    cam = check_array(z["camera"], path, "camera", (4,) if z["camera"].ndim == 1 else (None, 4))
    y3d = check_array(z["poses_3d"], path, "poses_3d", (None, NJ, 3)) if "poses_3d" in z else None
    split = make_split(path, x2d, cam, y3d, z.get("action"))
    return split, (z["subject"].astype(str) if "subject" in z else None)


def subset(split, mask):
    return {k: (v[mask] if v is not None else None) for k, v in split.items()}


def load_memory(path):
    """--prior: npz with poses_3d (N,17,3) metres, or a folder of BVH files (CMU joint names)."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.bvh")))
        if not files:
            raise InputError(f"{path}: no .bvh files in this folder (expected BVH mocap with CMU joint names)")
        return np.concatenate([bvh_to_h36m(f, stride=4) for f in files])
    z = common.load_npz(path, ["poses_3d"], "poses_3d (N,17,3) metres, H36M-17 order")
    return check_array(z["poses_3d"], path, "poses_3d", (None, NJ, 3))


class SafeUnpickler(pickle.Unpickler):
    """Unpickles VideoPose3D's dicts of numpy arrays and refuses every other class: no code runs."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core" if hasattr(np, "_core") else "numpy.core")
        return super().find_class(module, name)


def load_pickled_npz_dict(path, key):
    """Read the object array `key` of an npz (a pickled dict) through SafeUnpickler."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (expected VideoPose3D's Human3.6M npz files here)")
    try:
        with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
            fp = io.BytesIO(f.read())
        version = np.lib.format.read_magic(fp)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fp)
        if dtype.hasobject:
            obj = SafeUnpickler(fp).load()
        else:
            obj = np.lib.format.read_array(io.BytesIO(fp.getvalue()), allow_pickle=False)
        return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    except (KeyError, zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise InputError(f"{path}: cannot read '{key}' as VideoPose3D's pickled dict "
                         f"(subject -> action -> array): {e}") from None


def quat_to_matrix(q):
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def load_h36m(folder, keypoints):
    """Human3.6M in VideoPose3D's layout -> train/test splits (S1,S5-S8 / S9,S11) and the memory."""
    p3 = os.path.join(folder, "data_3d_h36m.npz")
    p2 = os.path.join(folder, f"data_2d_h36m_{keypoints}.npz")
    pos3d, pos2d = load_pickled_npz_dict(p3, "positions_3d"), load_pickled_npz_dict(p2, "positions_2d")
    with open(H36M_CAMERAS) as f:
        cameras = json.load(f)
    intrinsics, extrinsics = cameras["intrinsics_fx_fy_cx_cy"], cameras["extrinsics_qwxyz_tmm"]
    splits = {}
    for role, subjects in (("train", H36M_TRAIN), ("test", H36M_TEST)):
        x2d, cams, y3d, acts = [], [], [], []
        for s in subjects:
            if s not in pos3d or s not in pos2d:
                raise InputError(f"{p3} / {p2}: subject {s} missing (found {sorted(pos3d)} / {sorted(pos2d)})")
            for action, world in pos3d[s].items():
                world = np.asarray(world, np.float32)
                if world.ndim != 3 or world.shape[1:] not in ((32, 3), (NJ, 3)):
                    raise InputError(f"{p3}: {s}/{action} has shape {world.shape}; expected (N, 32, 3)")
                world = world[:, H36M_KEEP] if world.shape[1] == 32 else world
                views = pos2d[s].get(action)
                if views is None or len(views) != 4:
                    raise InputError(f"{p2}: {s}/{action} needs 4 camera views of (N, 17, 2) keypoints")
                for c, kp in enumerate(views):
                    if s == "S11" and action == "Directions" and c == 0:
                        continue  # a known broken clip, dropped by convention
                    kp = np.asarray(kp, np.float32)[..., :2]
                    if kp.ndim != 3 or kp.shape[1] != NJ:
                        raise InputError(f"{p2}: {s}/{action} camera {c} has shape {kp.shape}; expected (N, 17, 2)")
                    n = min(len(kp), len(world))
                    q, t = np.array(extrinsics[s][c][:4]), np.array(extrinsics[s][c][4:]) / 1000
                    x_cam = (world[:n] - t) @ quat_to_matrix(q)  # R^T (X - t), camera-to-world R
                    x2d.append(kp[:n]); y3d.append(x_cam.astype(np.float32))
                    cams.append(np.tile(np.array(intrinsics[c], np.float32), (n, 1)))
                    acts += [action.split(" ")[0]] * n
        splits[role] = make_split(p2, np.concatenate(x2d), np.concatenate(cams), np.concatenate(y3d), acts)
    memory = np.concatenate([np.asarray(w, np.float32)[:, H36M_KEEP] for s in H36M_TRAIN for w in pos3d[s].values()])
    return splits, memory


def load_dataset(args, dist):
    """Resolve --data / --prior into {"train", "val" (or None), "test", "memory", "name", "action_mean"}."""
    data, name, action_mean, memory = args.data, "", False, None
    if data is None:  # the built-in dataset, cached, read back through the generic folder loader
        data = os.path.join(common.cache_dir("pose"), "builtin_v1")
        if dist.main and not os.path.isdir(data):
            tmp = f"{data}.tmp{os.getpid()}"  # build aside, then rename: concurrent runs never see half a build
            from tools.pose_builtin import build_builtin  # the generator is data, not the method
            build_builtin(tmp)
            try:
                os.rename(tmp, data)
            except OSError:  # another process finished first
                shutil.rmtree(tmp)
        dist.barrier()
    if os.path.isdir(data) and os.path.exists(os.path.join(data, "data_3d_h36m.npz")):
        splits, memory = load_h36m(data, args.keypoints)
        splits["val"], name, action_mean = None, "h36m", True
    elif os.path.isdir(data):
        if not os.path.exists(os.path.join(data, "train.npz")) or not os.path.exists(os.path.join(data, "test.npz")):
            raise InputError(f"{data}: expected train.npz and test.npz (and optional val.npz, memory.npz) in the "
                             f"generic layout, or Human3.6M's data_3d_h36m.npz + data_2d_h36m_<src>.npz")
        splits = {r: load_pose_npz(os.path.join(data, f"{r}.npz"))[0] for r in ("train", "test")}
        val = os.path.join(data, "val.npz")
        splits["val"] = load_pose_npz(val)[0] if os.path.exists(val) else None
        if os.path.exists(os.path.join(data, "memory.npz")):
            memory = load_memory(os.path.join(data, "memory.npz"))
        name = "builtin" if args.data is None else os.path.basename(os.path.normpath(data))
    else:  # one npz: hold out the last ~20% of subjects (or of frames) as the test split
        split, subj = load_pose_npz(data)
        names = sorted(set(subj)) if subj is not None else []
        if len(names) >= 2:
            test = np.isin(subj, names[-max(1, round(0.2 * len(names))):])
        else:
            test = np.arange(len(split["x2d"])) >= int(0.8 * len(split["x2d"]))
        splits = {"train": subset(split, ~test), "test": subset(split, test), "val": None}
        name = os.path.basename(data)
    if args.prior:
        memory = load_memory(args.prior)
    elif memory is None:
        memory = load_memory(os.path.join(HERE, "data", "cmu_h36m17.npz"))
    if args.noise_2d > 0:  # fixed noise per frame (seeded), the same in every run with this seed
        rng = np.random.default_rng(args.seed + 17)
        for s in (v for v in splits.values() if v is not None):
            s["x2d"] = s["x2d"] + rng.normal(0, args.noise_2d, s["x2d"].shape).astype(np.float32)
    return {**splits, "memory": memory, "name": name, "action_mean": action_mean}


# ==============================================================================================
# Networks
def normalise_2d(x2d, cam):
    """Pixels -> the generator's scale-free input.
    x2d (B,17,2) pixels with NaN for missing joints, cam (B,4) -> (inp (B,53), xn (B,17,2) normalised
    camera coordinates (x-cx)/fx, vis (B,17) bool, scale (B,) RMS 2D size of the person)."""
    vis = torch.isfinite(x2d).all(-1)                                             # (B,17)
    xn = torch.where(vis[..., None], (x2d - cam[:, None, 2:]) / cam[:, None, :2], 0.0)
    w = vis.float()
    mean = (xn * w[..., None]).sum(1) / w.sum(1, keepdim=True)                    # (B,2)
    centre = torch.where(vis[:, :1], xn[:, 0], mean)                              # pelvis if seen
    d = (xn - centre[:, None]) * w[..., None]                                     # (B,17,2)
    scale = ((d ** 2).sum((1, 2)) / w.sum(1)).sqrt().clamp_min(1e-6)              # (B,)
    inp = torch.cat([(d / scale[:, None, None]).flatten(1), w, centre], 1)        # (B, 17*2+17+2)
    return inp, xn, vis, scale


class Generator(nn.Module):
    """Residual MLP lifter (Martinez et al. 2017 style) with a 2D skip connection: the x, y of each
    joint are the observed normalised 2D coordinates times a predicted size (metres) plus a learned
    correction, and the depth of each joint is predicted. At initialisation the pose already
    reprojects onto its input, so learning is about depth and size, which is exactly what the
    renderer cannot tell and the memory must. Output: root-relative 3D joints in metres."""

    def __init__(self, hidden=512, blocks=2):
        super().__init__()
        self.inp = nn.Linear(NJ * 3 + 2, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                                  nn.Linear(hidden, hidden), nn.LeakyReLU(0.2)) for _ in range(blocks))
        self.out = nn.Linear(hidden, NJ * 3 + 1)

    def forward(self, inp):                                                       # (B, 53)
        h = F.leaky_relu(self.inp(inp), 0.2)
        for block in self.blocks:
            h = h + block(h)
        o = self.out(h)
        d2 = inp[:, :NJ * 2].view(-1, NJ, 2)                                      # (B,17,2) scale-free 2D
        size = 0.5 * torch.exp(o[:, -1:, None])                                   # (B,1,1) metres per unit
        xy = size * d2 + 0.1 * o[:, :NJ * 2].view(-1, NJ, 2)                      # (B,17,2)
        z = o[:, NJ * 2:NJ * 3, None]                                             # (B,17,1) depth
        pose = torch.cat([xy, z], -1)
        return pose - pose[:, :1]                                                 # (B,17,3), root at 0


def canonicalise(pose):
    """Rotate a pose into its own body frame (x: right->left hip, y: pelvis->thorax, z = x cross y)
    so the discriminator judges the pose, not the camera. A proper rotation: a depth-flipped
    (mirrored) pose stays mirrored and remains detectable. (B,17,3) -> (B,17,3)."""
    p = pose - pose[:, :1]
    up = F.normalize(p[:, 8], dim=-1, eps=1e-6)                                   # (B,3)
    h = p[:, 4] - p[:, 1]
    x = F.normalize(h - (h * up).sum(-1, keepdim=True) * up, dim=-1, eps=1e-6)
    z = torch.cross(x, up, dim=-1)
    R = torch.stack([x, up, z], 1)                                                # (B,3,3) rows
    return p @ R.transpose(1, 2)


class Discriminator(nn.Module):
    """MLP on canonical joints, bone vectors and bone lengths: memory pose (1) vs prediction (0)."""

    def __init__(self, hidden=512):
        super().__init__()
        self.register_buffer("parents", torch.tensor(PARENTS[1:]), persistent=False)
        self.net = nn.Sequential(nn.Linear((NJ - 1) * 7, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, pose):                                                      # (B,17,3) metres
        c = canonicalise(pose)
        bones = c[:, 1:] - c[:, self.parents]                                     # (B,16,3)
        feats = torch.cat([c[:, 1:].flatten(1), bones.flatten(1), bones.norm(dim=-1)], 1)
        return self.net(feats).squeeze(1)                                         # (B,) logits


# ==============================================================================================
# Renderer P: place the root-relative pose in front of the camera and project it
def place_and_project(pose, xn, vis, camera="perspective"):
    """The AIGN renderer for poses. pose (B,17,3) root-relative metres, xn (B,17,2) observed
    normalised coordinates, vis (B,17). The translation t = (tx, ty, tz) that best places the pose
    is solved in closed form (linear least squares over visible joints: x_j (Z_j + tz) = X_j + tx
    for perspective, x_j tz = X_j + tx for weak perspective), so the renderer has no parameters.
    Returns projected normalised coordinates (B,17,2) and t (B,3)."""
    X, Y, Z = pose.unbind(-1)                                                     # (B,17) each
    zj = Z if camera == "perspective" else torch.zeros_like(Z)
    w = vis.to(pose.dtype)
    one, zero = torch.ones_like(X), torch.zeros_like(X)
    # unknowns (tx, ty, tz): rows [-1, 0, x_j] and [0, -1, y_j]; right-hand side X_j - x_j Z_j, ...
    A = torch.cat([torch.stack([-one, zero, xn[..., 0]], -1), torch.stack([zero, -one, xn[..., 1]], -1)], 1)
    b = torch.cat([X - xn[..., 0] * zj, Y - xn[..., 1] * zj], 1)                 # (B,34)
    Aw = A * torch.cat([w, w], 1)[..., None]                                      # (B,34,3)
    lhs = Aw.transpose(1, 2) @ A + 1e-6 * torch.eye(3, dtype=pose.dtype, device=pose.device)
    t = torch.linalg.solve(lhs, (Aw.transpose(1, 2) @ b[..., None]))[..., 0]      # (B,3)
    depth = (zj + t[:, 2:3]).clamp_min(1e-2)                                      # (B,17) > 0
    proj = torch.stack([X + t[:, :1], Y + t[:, 1:2]], -1) / depth[..., None]      # (B,17,2)
    return proj, t


def to_pixels(xn, cam):
    """Normalised camera coordinates (B,J,2) -> pixels with intrinsics (B,4)."""
    return xn * cam[:, None, :2] + cam[:, None, 2:]


# ==============================================================================================
# Losses
def reprojection_loss(proj, xn, vis, scale):
    """l_rec(P(G(x)), x): squared 2D error over visible joints, in units of the person's 2D size."""
    err = ((proj - xn) / scale[:, None, None]).pow(2).sum(-1)                     # (B,17)
    return (err * vis).sum() / vis.sum().clamp_min(1)


def d_loss(D, real, fake, gan):
    """Discriminator: memory poses are real, predictions fake. (B,17,3) each."""
    logits = D(torch.cat([real, fake]))
    lr, lf = logits[:len(real)], logits[len(real):]
    if gan == "bce":     # -log D(y_mem) - log(1 - D(G(x)))  (the paper's loss)
        return F.softplus(-lr).mean() + F.softplus(lf).mean()
    if gan == "lsgan":
        return 0.5 * ((lr - 1) ** 2).mean() + 0.5 * (lf ** 2).mean()
    alpha = torch.rand(len(real), 1, 1, device=real.device)                      # WGAN-GP
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)
    return lf.mean() - lr.mean() + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def g_adv_loss(D, fake, gan):
    """Generator's adversarial term: make predictions look like memory poses."""
    logits = D(fake)
    if gan == "bce":     # non-saturating -log D(G(x))
        return F.softplus(-logits).mean()
    if gan == "lsgan":
        return 0.5 * ((logits - 1) ** 2).mean()
    return -logits.mean()


# ==============================================================================================
# Metrics (millimetres): MPJPE, P-MPJPE (similarity Procrustes with a proper rotation), N-MPJPE
def mpjpe(pred, gt):
    """(N,17,3) root-relative metres -> (N,) mean joint error in mm."""
    return 1000 * (pred - gt).norm(dim=-1).mean(-1)


def procrustes_align(pred, gt):
    """Align pred to gt with scale, rotation (det = +1: reflections are not allowed, so a depth-flipped
    pose is not 'fixed' by the alignment) and translation. (N,J,3) -> (N,J,3)."""
    mp, mg = pred.mean(1, keepdim=True), gt.mean(1, keepdim=True)
    p0, g0 = pred - mp, gt - mg
    M = g0.transpose(1, 2) @ p0                                                   # (N,3,3) = sum g p^T
    U, S, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U @ Vh))                                      # -1 -> reflection
    Dm = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ Dm @ Vh                                                               # proper rotation
    s = (S * Dm.diagonal(dim1=1, dim2=2)).sum(-1) / p0.pow(2).sum((1, 2)).clamp_min(1e-12)
    return s[:, None, None] * p0 @ R.transpose(1, 2) + mg


def p_mpjpe(pred, gt):
    return mpjpe(procrustes_align(pred, gt), gt)


def n_mpjpe(pred, gt):
    """Error after the least-squares scale s = <pred, gt> / <pred, pred> (root-relative poses)."""
    s = (pred * gt).sum((1, 2)) / pred.pow(2).sum((1, 2)).clamp_min(1e-12)
    return mpjpe(s[:, None, None] * pred, gt)


# ==============================================================================================
# Evaluation and figures
@torch.no_grad()
def predict(G, x2d, cam, camera, device, batch=4096):
    """(N,17,2) pixels, (N,4) -> root-relative poses (N,17,3) and placed camera-frame poses (N,17,3)."""
    G.eval()
    rel, placed = [], []
    for i in range(0, len(x2d), batch):
        xb, cb = torch.as_tensor(x2d[i:i + batch], device=device), torch.as_tensor(cam[i:i + batch], device=device)
        inp, xn, vis, _ = normalise_2d(xb, cb)
        pose = G(inp)
        _, t = place_and_project(pose, xn, vis, camera)
        rel.append(pose.cpu()); placed.append((pose + t[:, None]).cpu())
    G.train()
    return torch.cat(rel), torch.cat(placed)


def evaluate(G, split, camera, device, action_mean):
    """Metrics of G on a split with 3D ground truth: overall (action-wise mean on H36M, frame mean
    elsewhere) and per action."""
    pred, _ = predict(G, split["x2d"], split["cam"], camera, device)
    gt = torch.as_tensor(split["y3d"])
    gt = gt - gt[:, :1]
    errs = {"mpjpe": mpjpe(pred, gt), "p_mpjpe": p_mpjpe(pred, gt), "n_mpjpe": n_mpjpe(pred, gt)}
    actions = sorted(set(split["action"]))
    per_action = {a: {k: float(v[torch.as_tensor(split["action"] == a)].mean()) for k, v in errs.items()}
                  for a in actions}
    if action_mean:
        overall = {k: float(np.mean([per_action[a][k] for a in actions])) for k in errs}
    else:
        overall = {k: float(v.mean()) for k, v in errs.items()}
    return {**overall, "per_action": per_action}


COLOURS = {"l": (40, 100, 230), "r": (225, 60, 40), "c": (70, 70, 70)}


def draw_skeleton(canvas, pts, alpha=1.0, radius=1):
    """Rasterise a skeleton: pts (17,2) pixel coordinates in the canvas (H,W,3) uint8, in place.
    Bones are stamped as discs along each segment; left limbs blue, right red, spine grey."""
    H, W, _ = canvas.shape
    for j in range(1, NJ):
        a, b = pts[PARENTS[j]], pts[j]
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue
        colour = np.array(COLOURS["l" if j in LEFT else "r" if j in RIGHT else "c"], float)
        n = int(np.ceil(np.abs(b - a).max())) * 2 + 2
        seg = a[None] + np.linspace(0, 1, n)[:, None] * (b - a)[None]
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx * dx + dy * dy > radius * radius + 1:
                    continue
                x, y = np.round(seg[:, 0] + dx).astype(int), np.round(seg[:, 1] + dy).astype(int)
                ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
                canvas[y[ok], x[ok]] = (alpha * colour + (1 - alpha) * canvas[y[ok], x[ok]]).astype(np.uint8)
    return canvas


def view3d(pose, size=160, yaw=0.0, extent=2.2, ghost=None):
    """Orthographic picture of a root-relative camera-frame pose (17,3) turned by `yaw` degrees about
    the camera's vertical axis (0 = the camera's view, 90 = from the side); optional ghost pose."""
    R = euler_matrix("Y", np.array([yaw]))[0]
    canvas = np.full((size, size, 3), 255, np.uint8)
    canvas[size - 1, :] = canvas[:, 0] = 200
    for p, alpha in ((ghost, 0.3), (pose, 1.0)):
        if p is not None:
            q = (np.asarray(p, float) - np.asarray(p, float)[0]) @ R.T
            draw_skeleton(canvas, q[:, :2] * size / extent + size / 2, alpha, radius=1 if alpha < 1 else 2)
    return canvas


def view2d(x2d, size=160):
    """The 2D input, fitted into the panel."""
    ok = np.isfinite(x2d).all(-1)
    lo, hi = x2d[ok].min(0), x2d[ok].max(0)
    s = 0.8 * size / max((hi - lo).max(), 1e-6)
    canvas = np.full((size, size, 3), 255, np.uint8)
    return draw_skeleton(canvas, (x2d - (lo + hi) / 2) * s + size / 2, radius=2)


def save_figures(G, split, camera, device, out_dir, n=6):
    """samples.png: rows of fixed test samples: input 2D | prediction (camera) | prediction (side) |
    ground truth (camera) | ground truth (side); turntable.gif: the first prediction turning around."""
    idx = np.linspace(0, len(split["x2d"]) - 1, n).astype(int)                 # fixed, spread samples
    pred, _ = predict(G, split["x2d"][idx], split["cam"][idx], camera, device)
    pred = pred.numpy()
    gt = split["y3d"][idx] - split["y3d"][idx][:, :1] if split["y3d"] is not None else [None] * n
    rows = []
    for k in range(n):
        row = [view2d(split["x2d"][idx[k]]), view3d(pred[k]), view3d(pred[k], yaw=90)]
        if gt[k] is not None:
            row += [view3d(gt[k]), view3d(gt[k], yaw=90)]
        rows.append(row)
    common.write_png(os.path.join(out_dir, "samples.png"), common.image_grid(rows))
    frames = [common.image_grid([[view3d(pred[0], size=256, yaw=yaw, ghost=gt[0])]]) for yaw in range(0, 360, 10)]
    common.write_gif(os.path.join(out_dir, "turntable.gif"), frames, fps=12)


# ==============================================================================================
# Training
def train(args, dist, data, G, D, ckpt, run_dir):
    """Alternate D and G updates (separate Adam optimisers, as in the paper) for --steps in total."""
    device, B = dist.device, args.batch_size
    tr = data["train"]
    # the data live on the device once; each step only gathers its rows
    x2d, cam = torch.as_tensor(tr["x2d"], device=device), torch.as_tensor(tr["cam"], device=device)  # (N,17,2), (N,4)
    memory = torch.as_tensor(data["memory"], device=device)                     # (M,17,3)
    n_paired = int(round(args.paired_frac * len(x2d)))
    use_unpaired = args.lambda_rec > 0 or args.lambda_adv > 0
    use_paired = n_paired > 0 and args.lambda_sup > 0
    if not (use_unpaired or use_paired):
        raise InputError("nothing to train: set --lambda-rec/--lambda-adv > 0 or --paired-frac and --lambda-sup > 0")
    if use_paired and tr["y3d"] is None:
        raise InputError("--paired-frac > 0 needs poses_3d in the training data")
    if args.lambda_adv > 0 and len(memory) < B:
        raise InputError(f"the 3D memory holds {len(memory)} poses, fewer than --batch-size {B}")
    # the paired subset: the first --paired-frac of the training frames in file order, i.e. whole
    # sequences of the first subjects, as when a lab labels a few sessions (cf. "10% of S1" protocols)
    paired = torch.arange(n_paired)
    y3d = torch.as_tensor(tr["y3d"], device=device) if use_paired else None
    y_rel = y3d - y3d[:, :1] if use_paired else None                           # (N,17,3) root-relative

    G_ddp = nn.parallel.DistributedDataParallel(G) if dist.world > 1 else G
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(args.seed)                             # all batch sampling
    start, elapsed, running = 0, 0.0, {}
    if ckpt is not None:
        opt_g.load_state_dict(ckpt["opt_g"]); opt_d.load_state_dict(ckpt["opt_d"])
        gen.set_state(ckpt["data_rng"]); common.set_rng_state(ckpt["rng"])
        start, elapsed, running = ckpt["step"], ckpt["elapsed"], dict(ckpt["running"])

    def draw(n):  # the global batch is drawn identically on every rank; each rank takes its slice
        return torch.randint(n, (B * dist.world,), generator=gen)[dist.rank * B:(dist.rank + 1) * B]

    def train_step():
        losses = {}
        iu, im = draw(len(x2d)), draw(len(memory))
        ip = paired[draw(n_paired)] if use_paired else iu[:0]
        nu = len(iu) if use_unpaired else 0
        rows = torch.cat([iu[:nu], ip])
        inp, xn, vis, scale = normalise_2d(x2d[rows], cam[rows])
        if args.lambda_adv > 0:
            # D step: L_D = -log D(y_mem) - log(1 - D(G(x)))
            with torch.no_grad():
                fake = G(inp[:nu])
            loss_d = d_loss(D, memory[im], fake, args.gan)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            dist.average_grads(D)
            opt_d.step()
            losses["loss_d"] = loss_d.item()
        # G step
        pose = G_ddp(inp)                                                         # (nu+Bp,17,3)
        loss_g = pose.new_zeros(())
        if use_unpaired:
            # (i) the renderer: P(G(x)) must reproduce the observed 2D keypoints
            proj, _ = place_and_project(pose[:nu], xn[:nu], vis[:nu], args.camera)
            loss_rec = reprojection_loss(proj, xn[:nu], vis[:nu], scale[:nu])
            loss_g = loss_g + args.lambda_rec * loss_rec
            losses["loss_rec"] = loss_rec.item()
            if args.lambda_adv > 0:
                # (ii) the adversarial prior: predictions must look like poses from the memory
                loss_adv = g_adv_loss(D, pose[:nu], args.gan)
                loss_g = loss_g + args.lambda_adv * loss_adv
                losses["loss_adv"] = loss_adv.item()
        if use_paired:
            # paired supervision where labels exist: ||G(x) - y||^2 on root-relative joints (metres)
            loss_sup = (pose[nu:] - y_rel[ip]).pow(2).sum(-1).mean()
            loss_g = loss_g + args.lambda_sup * loss_sup
            losses["loss_sup"] = loss_sup.item()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        return losses

    def checkpoint(step):
        if dist.main:
            common.save_checkpoint(os.path.join(run_dir, "ckpt.pt"), {
                "step": step, "G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "data_rng": gen.get_state(), "rng": common.rng_state(),
                "elapsed": elapsed, "running": running, "args": vars(args)})
        dist.barrier()

    if args.bench:
        return bench(args, dist, train_step, run_dir)
    log_ = common.MetricsLog(run_dir, ckpt["step"] if ckpt else None, enabled=dist.main)
    stop = common.StopRequest()
    eval_split = data["val"] if data["val"] is not None else data["test"]
    t0 = time.perf_counter()
    bar = common.progress(start, args.steps, dist, args.no_progress)
    for step in bar:
        for k, v in train_step().items():
            running[k] = running.get(k, 0.0) + v
        running["n"] = running.get("n", 0) + 1
        done = step + 1
        stopping = dist.any(stop.requested)  # all ranks stop together, whichever got the signal
        if done % args.eval_every == 0 or done == args.steps or stopping:
            elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            record = {"step": done, **{k: dist.mean(v / running["n"]) for k, v in running.items() if k != "n"},
                      "wall_s": round(elapsed, 2)}
            running = {}
            if dist.main and eval_split["y3d"] is not None:
                m = evaluate(G, eval_split, args.camera, device, data["action_mean"])
                record.update({f"{'val' if data['val'] is not None else 'test'}_{k}": v
                               for k, v in m.items() if k != "per_action"})
            log_.write(record)
            common.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), dist)
            checkpoint(done)
            t0 = time.perf_counter()
            if stopping:
                common.log(f"stopped at step {done}; continue with --resume {os.path.join(run_dir, 'ckpt.pt')}", dist)
                return None
    # elapsed was brought up to date at the last step's evaluation
    return {"steps": args.steps, "wall_seconds": round(elapsed, 2),
            "samples_per_s": round(B * dist.world * args.steps / elapsed, 1) if start < args.steps else None}


def bench(args, dist, train_step, run_dir, steps=30):
    """--bench: samples/s of training steps, FLOPs per step and the fraction of the measured matmul peak."""
    device = dist.device
    for _ in range(5):
        train_step()
    common.sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    common.sync(device)
    dt = (time.perf_counter() - t0) / steps
    flops = common.count_flops(train_step)
    peak = common.matmul_peak(device)
    res = {"device": str(device), "batch_size": args.batch_size, "world": dist.world, "step_ms": round(1000 * dt, 2),
           "samples_per_s": round(args.batch_size * dist.world / dt, 1), "gflop_per_step": round(flops / 1e9, 3),
           "achieved_gflops": round(flops / dt / 1e9, 1), "matmul_peak_gflops": round(peak / 1e9, 1),
           "fraction_of_peak": round(flops / dt / peak, 3), **common.versions()}
    if dist.main:
        common.write_json(os.path.join(run_dir, "bench.json"), res)
    common.log(json.dumps(res, indent=1), dist)
    return None


# ==============================================================================================
# Prediction on user keypoints (--predict FILE)
def load_keypoints(path, order):
    """npz or JSON with keypoints (N,17,2|3) pixels (a 3rd column = confidence, 0 = missing), and
    camera (4,)/(N,4) fx fy cx cy or image_size (w, h) (then f = max(w, h), centre = middle).
    H36M-17 or COCO-17 order ('layout' in the file, or --keypoint-order)."""
    layout_help = ("'keypoints' (N,17,2 or 3) pixels in H36M-17 or COCO-17 order, plus 'camera' "
                   "(fx, fy, cx, cy) or 'image_size' (w, h)")
    if path.endswith(".json"):
        try:
            with open(path) as f:
                z = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: cannot read JSON ({e}); expected {layout_help}") from None
        z = {k: (np.array(v) if k != "layout" else v) for k, v in z.items()}
    else:
        z = common.load_npz(path, (), layout_help)
        if "poses_2d" in z:
            z["keypoints"] = z["poses_2d"]
    if "keypoints" not in z or ("camera" not in z and "image_size" not in z):
        raise InputError(f"{path}: found keys {sorted(z)}; expected {layout_help}")
    kp = np.asarray(z["keypoints"], np.float64)
    kp = kp[None] if kp.ndim == 2 else kp
    if kp.ndim != 3 or kp.shape[1] != 17 or kp.shape[2] not in (2, 3):
        raise InputError(f"{path}: keypoints have shape {kp.shape}; expected {layout_help}")
    if kp.shape[2] == 3:
        kp = np.where(kp[..., 2:] > 0, kp[..., :2], np.nan)
    order = order or str(z.get("layout", "h36m")).lower()
    if order == "coco":  # COCO-17 -> H36M-17: each H36M joint is the mean of its COCO joints
        kp = np.stack([kp[:, idx].mean(1) for idx in COCO_TO_H36M], 1)
    if "camera" in z:
        cam = check_array(np.asarray(z["camera"], np.float32), path, "camera",
                          (4,) if np.ndim(z["camera"]) == 1 else (None, 4))
    else:
        w, h = np.asarray(z["image_size"], np.float32).reshape(2)
        cam = np.array([max(w, h), max(w, h), w / 2, h / 2], np.float32)
    return make_split(path, kp.astype(np.float32), cam)


def run_predict(args, dist, G, run_dir):
    split = load_keypoints(args.predict, args.keypoint_order)
    rel, placed = predict(G, split["x2d"], split["cam"], args.camera, dist.device)
    out = os.path.join(run_dir, "predictions.npz")
    np.savez(out, poses_3d=placed.numpy(), poses_3d_root_relative=rel.numpy(), camera=split["cam"])
    with open(os.path.join(run_dir, "predictions.json"), "w") as f:
        json.dump({"joints": JOINTS, "units": "metres, camera coordinates (x right, y down, z forward)",
                   "poses_3d": placed.numpy().round(4).tolist()}, f)
    common.write_png(os.path.join(run_dir, "predictions.png"), common.image_grid(
        [[view2d(split["x2d"][k]), view3d(rel[k].numpy()), view3d(rel[k].numpy(), yaw=90)] for k in range(min(4, len(rel)))]))
    common.log(f"wrote {len(rel)} poses to {out} and predictions.json", dist)


# ==============================================================================================
# Main
ARCH_FLAGS = ("hidden", "blocks", "camera")


def main(argv=None):
    args = get_args(argv)
    dist = common.Dist(args.device)
    ckpt = common.load_checkpoint(args.resume, required=("step", "G", "D", "args")) if args.resume else None
    if (args.eval_only or args.predict) and ckpt is None:
        raise InputError("--eval-only and --predict need --resume CKPT")
    if ckpt is not None:  # the network shape comes from the checkpoint
        for k in ARCH_FLAGS:
            setattr(args, k, ckpt["args"][k])
    if (args.eval_only or args.predict) and args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join(os.path.dirname(os.path.abspath(args.resume)),
                                f"{'predict' if args.predict else 'eval'}-{stamp}")
    common.seed_everything(args.seed, args.deterministic)
    run_dir = common.make_run_dir(args, "pose_aign", dist)
    G = Generator(args.hidden, args.blocks).to(dist.device)
    D = Discriminator().to(dist.device)
    if ckpt is not None:
        G.load_state_dict(ckpt["G"]); D.load_state_dict(ckpt["D"])
    if args.predict:
        return run_predict(args, dist, G, run_dir)
    data = load_dataset(args, dist)
    common.log(f"data {data['name']}: {len(data['train']['x2d'])} train 2D, {len(data['memory'])} memory 3D, "
               f"{len(data['test']['x2d'])} test; run folder {run_dir}", dist)
    stats = {} if args.eval_only else train(args, dist, data, G, D, ckpt, run_dir)
    if stats is None or not dist.main:  # bench, interrupted, or not rank 0
        return
    test = data["test"]
    results = {"dataset": data["name"], "split": "test", "n_test": len(test["x2d"]),
               "step": args.steps if not args.eval_only else ckpt["step"], **stats}
    if test["y3d"] is not None:
        results.update(evaluate(G, test, args.camera, dist.device, data["action_mean"]))
        common.log(f"test: MPJPE {results['mpjpe']:.1f} mm  P-MPJPE {results['p_mpjpe']:.1f} mm  "
                   f"N-MPJPE {results['n_mpjpe']:.1f} mm", dist)
    else:
        common.log("test split has no poses_3d: metrics skipped", dist)
    common.write_json(os.path.join(run_dir, "results.json"), results)
    save_figures(G, test, args.camera, dist.device, run_dir)


if __name__ == "__main__":
    common.run_main(main)
