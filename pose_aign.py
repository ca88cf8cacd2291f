"""AIGN 2D-to-3D human pose lifting (Tung et al., ICCV 2017, section "3D human pose estimation").

G lifts 2D keypoints to 3D, learnt from 2D observations plus an *unpaired* memory of 3D poses:
    L_G = lambda_rec ||P(G(x)) - x||^2 + lambda_adv adv(D(G(x))) [+ lambda_sup s ||G(x) - y||^2 on paired x]
(s: the labelled share of the training frames, 1 if supervised-only) with P a parameter-free perspective
camera (plus the data's lens distortion) and D telling memory poses from predicted ones, also by how the
body stands relative to the camera (--tilt-prior).
Results card (built-in test split, mm, seeds 0-2, 3000 steps, 1 thread; docs/pose.md): unpaired default
P-MPJPE 46.7 ± 1.0 synthetic, 63.2 ± 2.8 real CMU (targets 50 / 70 met; 183-202 s a run on a shared 2-core
x86_64 VM, torch 2.13.0+cpu; CMU 86.0 on the earlier build without overhead clips). MPJPE 1.50x P-MPJPE
(target 1.3x not met; 1.27-1.32x with the ideal rotation).
AIGN + pairs 0.44 / 0.48 / 0.64 / 0.70x supervised-only at 1/2/5/10% labels.
Usage:
    python3 pose_aign.py                                     # unpaired AIGN on the built-in data
    python3 pose_aign.py --data poses.npz --memory mem.npz   # your 2D + a 3D memory (or --data H36M_DIR)
    python3 pose_aign.py --eval-only --resume runs/X/ckpt.pt --data ...   # or --predict keypoints.json
    torchrun --nproc_per_node 2 pose_aign.py --device cpu
"""
import argparse
import os
import textwrap
import time
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import InputError

# Human3.6M 17-joint skeleton (VideoPose3D order)
JOINTS = ["pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
          "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"]
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15]
NJ = 17
# COCO-17 (detector order) -> H36M-17, for --predict and COCO-layout Human3.6M 2D (detectron_pt_coco):
# each H36M joint is the mean of these COCO joints.
COCO_TO_H36M = [[11, 12], [12], [14], [16], [11], [13], [15], [5, 6, 11, 12], [5, 6], [0], [1, 2, 3, 4],
                [5], [7], [9], [6], [8], [10]]
# Human3.6M: the 17 of 32 joints kept, the standard split, and the public camera constants of
# VideoPose3D's h36m_dataset.py (float32 values): intrinsics fx fy cx cy of cameras 0-3, their lens
# distortion (radial k1 k2 k3, tangential p1 p2), then per subject (S1 S5 S6 S7 S8 S9 S11) and camera
# the camera-to-world quaternion qw qx qy qz and centre (mm).
H36M_KEEP = [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27]
H36M_TRAIN, H36M_TEST = ["S1", "S5", "S6", "S7", "S8"], ["S9", "S11"]
H36M_CAMERAS = np.array("""
1145.0494 1143.7811 512.5415 515.4515 1149.6757 1147.5917 508.84863 508.0649 1149.1407 1148.799 519.81586
501.40265 1145.5114 1144.7739 514.9682 501.88202 -0.20709892 0.24777518 -0.0030751503 -0.0009756989
-0.0014244716 -0.19421363 0.24040854 0.0068199756 -0.0016190266 -0.0027408944 -0.20833819 0.25548801
-0.0024604974 0.001484387 -0.00075999933 -0.19838409 0.21832368 -0.0089478074 -0.00058720558 -0.0018133620
0.14070565 -0.15007018 -0.7552408 0.62232804 1841.107 4955.2847 1563.4454 0.6157188 -0.7648363 -0.14833826
0.11794741 1761.2786 -5078.007 1606.265 0.14651473 -0.14647852 0.76530236 -0.60941756 -1846.7777 5215.0464
1491.9724 0.58340085 -0.7853162 0.14548823 -0.14749594 -1794.7897 -3722.699 1574.8927 0.14673772 -0.16237096
-0.7551893 0.6178939 2097.3916 4880.945 1605.7324 0.61597586 -0.7626792 -0.15728192 0.1189815 2031.7008
-5167.933 1612.9231 0.14291371 -0.12907842 0.7678385 -0.6110143 -1620.5948 5171.6587 1496.437 0.592048
-0.7814218 0.12747486 -0.15036418 -1637.1737 -3867.3174 1547.0332 0.13378978 -0.15692396 -0.75710905
0.61988795 1935.4518 4950.2456 1618.0839 0.61471975 -0.7628813 -0.16174768 0.11819245 1969.804 -5128.739
1632.7788 0.15299481 -0.13529131 0.76460963 -0.6112781 -1769.5964 5185.3613 1476.9934 0.59161013 -0.7804774
0.1283227 -0.15615939 -1721.6687 -3884.1313 1540.4879 0.14352418 -0.16313368 -0.75483286 0.6188825 1974.513
4926.3545 1597.8326 0.6141673 -0.76382625 -0.15966456 0.117792994 1937.0585 -5119.79 1631.5665 0.1455006
-0.12874816 0.76605165 -0.61271393 -1741.8112 5208.2495 1464.8246 0.5912848 -0.78217643 0.12445474 -0.15196487
-1734.7106 -3832.4214 1548.583 0.14110588 -0.15589868 -0.75619173 0.61964405 2150.6519 4896.161 1611.9047
0.61696017 -0.7647668 -0.1484635 0.11158158 2219.9656 -5148.453 1613.0441 0.1471444 -0.1337712 0.76701283
-0.61003697 -1571.2216 5137.0186 1498.1761 0.59278244 -0.78258705 0.12147816 -0.14631996 -1476.9133 -3896.7412
1547.9722 0.15540588 -0.15548216 -0.75320953 0.6199595 2044.4585 4935.117 1481.2275 0.6187845 -0.7634735
-0.14132239 0.11933968 1990.9597 -5123.8105 1568.8048 0.13357827 -0.13671005 0.76894546 -0.61007386 -1670.9922
5211.986 1528.388 0.5879399 -0.7823407 0.14276144 -0.1479487 -1696.0435 -3827.0999 1591.4127 0.15232472
-0.1544232 -0.75475633 0.619107 2098.4402 4926.5547 1500.2786 0.61894494 -0.7600917 -0.15300633 0.12552583
2083.1824 -4912.173 1561.0786 0.14943229 -0.15650228 0.7681234 -0.60263044 -1609.8153 5177.336 1537.8967
0.58942515 -0.7818877 0.13991211 -0.14715362 -1590.738 -3854.169 1578.0176
""".split(), np.float32).astype(np.float64)
H36M_INTRINSICS = H36M_CAMERAS[:16].reshape(4, 4)                                  # (camera, fx fy cx cy)
H36M_DISTORTION = H36M_CAMERAS[16:36].reshape(4, 5)                          # (camera, k1 k2 k3 p1 p2)
H36M_EXTRINSICS = dict(zip(H36M_TRAIN + H36M_TEST, H36M_CAMERAS[36:].reshape(7, 4, 7)))  # (camera, q t)
NPZ_LAYOUT = ("poses_2d (N,17,2) pixels (or (N,17,3) x, y, confidence: 0 = missing) in H36M-17 order, or "
              "COCO-17 with layout 'coco'; camera (4,) or (N,4) = fx fy cx cy (or K (3,3), (N,3,3); or image_size "
              "w h); optional distortion (5,) or (N,5) = k1 k2 k3 p1 p2 (VideoPose3D's lens model), or OpenCV's "
              "dist_coeffs k1 k2 p1 p2 [k3] (OpenCV's model); poses_3d (N,17,3) metres in camera coordinates "
              "(H36M-17); subject/action (N,) strings")
MEMORY_LAYOUT = "an npz with poses_3d (N,17,3) metres, H36M-17 order (BVH -> npz: tools/bvh_to_memory.py)"
LAYOUTS = "--data layouts (details: README):\n" + "\n".join("\n".join(textwrap.wrap(t, 100, initial_indent="  ",
    subsequent_indent="      ")) for t in (
    f"npz: one file: {NPZ_LAYOUT}; poses_3d is optional (without it: no metrics); the last ~20% of subjects "
    "are the test split", "folder: DIR/train.npz, DIR/test.npz [, val.npz, memory.npz] of that layout",
    "Human3.6M: DIR/data_3d_h36m.npz + DIR/data_2d_h36m_<--keypoints>.npz (VideoPose3D's layout)",
    f"--memory: {MEMORY_LAYOUT}"))


# ----------------------------------------------------------------------------------------------
# Args
def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__.split("\n")[0], epilog=LAYOUTS,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p, steps=3000, batch_size=256, lr=2e-4, eval_every=1000)
    p.add_argument("--memory", help=f"unpaired 3D memory, {MEMORY_LAYOUT} (default: a folder's memory.npz, "
                   "Human3.6M's training subjects; a single --data npz needs it)")
    p.add_argument("--keypoints", default="gt", help="Human3.6M 2D: data_2d_h36m_<this>.npz, H36M or COCO "
                   "layout, e.g. cpn_ft_h36m_dbb, detectron_pt_coco (default: gt)")
    p.add_argument("--paired-frac", type=float, default=0.0, help="fraction of training frames (the first "
                   "ones: whole sequences) whose 3D pose is used as paired supervision; each step then adds "
                   "--batch-size paired rows beside the unpaired ones (default: 0)")
    p.add_argument("--paired-actions", nargs="+", metavar="ACTION", help="pair only training frames of these "
                   "actions, --paired-frac of them (e.g. synthetic clips beside real ones; default: all)")
    p.add_argument("--lambda-sup", type=float, default=50.0, help="weight of the paired 3D term (mean squared "
                   "joint error, m^2), times the labelled share of the training frames beside the unpaired terms "
                   "(1 if supervised-only) (default: 50)")
    p.add_argument("--lambda-rec", type=float, default=1.0, help="reprojection loss weight (default: 1.0)")
    p.add_argument("--lambda-adv", type=float, default=0.01, help="adversarial prior weight (default: 0.01)")
    p.add_argument("--gan", choices=["bce", "lsgan", "wgan-gp"], default="bce",
                   help="adversarial loss: non-saturating BCE (paper), least squares, WGAN-GP (default: bce)")
    p.add_argument("--camera", choices=["perspective", "weak"], default="perspective",
                   help="renderer's camera model (default: perspective)")
    p.add_argument("--lift-frame", choices=["ray", "camera"], default="ray", help="ray: G lifts in a "
                   "virtual camera turned to look at the person, its pose rotated back; camera: in the "
                   "camera's frame (default: ray)")
    p.add_argument("--tilt-prior", choices=["elevation", "none"], default="elevation",
                   help="elevation: D also sees the body's up in the camera frame, the memory through "
                   "cameras of random yaw and --elevation; none: the body frame only (default: elevation)")
    p.add_argument("--elevation", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="camera elevations (degrees above the horizontal, drawn uniformly) of --tilt-prior "
                   "(default: Human3.6M's training cameras' range for Human3.6M data, else -10 40)")
    p.add_argument("--hidden", type=int, default=512, help="width of G's residual MLP (default: 512)")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks in G (default: 2)")
    p.add_argument("--joint-dropout", type=float, default=0.0, help="hide each training 2D joint with this "
                   "probability, as a detector misses joints (default: 0)")
    p.add_argument("--keypoint-order", choices=["h36m", "coco"], help="joint order of the 2D in --data npz "
                   "files and --predict input (default: the file's 'layout', else h36m; Human3.6M: its metadata)")
    args = p.parse_args(argv)
    common.check_args(args, nonneg_ints=("blocks",), positive_ints=("hidden",))
    lo, hi = args.elevation or (0, 0)
    if not -90 <= lo <= hi <= 90:
        raise InputError(f"--elevation {lo:g} {hi:g}: expected -90 <= LO <= HI <= 90")
    if not 0 <= args.joint_dropout < 1:
        raise InputError(f"--joint-dropout {args.joint_dropout}: expected a probability in [0, 1)")
    return args


# ----------------------------------------------------------------------------------------------
# Data
# Every source ends as the same split dicts: {"x2d": (N,17,2) pixels, NaN = missing joint; "cam": (N,4)
# fx fy cx cy; "dist": (N,9) the lens (lens_of) or None (a pinhole); "y3d": (N,17,3) metres in camera
# coordinates or None; "action": (N,) str}, plus the memory (M,17,3) of 3D poses in any world frame.
def make_split(path, x2d, cam, y3d=None, action=None, what=NPZ_LAYOUT, dist=None):
    """Every loader's arrays, checked: shapes, one N, finite positive focal lengths, NaN (not inf) = a gap.
    dist: the renderer's lens (9,)|(N,9) from lens_of, or None."""
    common.check_array(np.nan_to_num(x2d) if x2d.dtype.kind == "f" else x2d, path, "poses_2d", (None, NJ, 2),
                       what)                                                   # the shape (NaN, inf: below)
    x2d, n = np.ascontiguousarray(x2d, np.float32), len(x2d)

    def per_frame(a, key, k):  # (k,) for every frame or (N,k) -> (N,k)
        a = common.check_array(a, path, key, (k,) if np.ndim(a) == 1 else (None, k), what)
        return np.array(np.broadcast_to(a, (n, k)) if a.ndim == 1 else a)        # a writable copy
    cam, dist = per_frame(cam, "camera", 4), None if dist is None else per_frame(dist, "lens", 9)
    if n == 0:
        raise InputError(f"{path}: no frames (poses_2d has shape {x2d.shape}; {what})")
    y3d = None if y3d is None else check_poses(y3d, path, "poses_3d", what)
    if y3d is not None and not np.all(y3d[..., 2] > 0):
        raise InputError(f"{path}: poses_3d: {int((y3d[..., 2] <= 0).sum())} joint(s) at depth z <= 0, e.g. "
                         f"frame {np.where(y3d[..., 2] <= 0)[0][0]}; expected camera coordinates (x right, y "
                         f"down, z forward: > 0 in front of the camera)")
    if any(len(a) != n for a in (cam, y3d, dist) if a is not None) or (action is not None and
                                                                     np.shape(action) != (n,)):
        counts = ", ".join(f"{k} {len(a) if k != 'subject/action' else np.shape(a)}" for k, a in (
            ("camera", cam), ("distortion", dist), ("poses_3d", y3d), ("subject/action", action)) if a is not None)
        raise InputError(f"{path}: poses_2d has {n} frames but {counts}; expected one N ({what})")
    if not np.all(cam[:, :2] > 0):
        raise InputError(f"{path}: camera focal lengths must be finite and positive (fx fy cx cy); found "
                         f"fx, fy in [{cam[:, :2].min():g}, {cam[:, :2].max():g}]")
    if np.isinf(x2d).any():
        raise InputError(f"{path}: 2D keypoints hold {int(np.isinf(x2d).sum())} inf value(s); only NaN "
                         f"marks a missing joint")
    dead = np.where(~np.isfinite(x2d).all(-1).any(-1))[0]
    if len(dead):
        raise InputError(f"{path}: {len(dead)} frame(s) have no valid 2D joint (all NaN), e.g. frame "
                         f"{dead[0]}; drop them or mark only the missing joints as NaN")
    span = np.nanmedian(np.nanmax(x2d, 1) - np.nanmin(x2d, 1), 0).max()    # a pose's median extent (px)
    off = np.nanmedian(np.abs(x2d - cam[:, None, 2:]) / cam[:, None, :2])    # ... from the axis, in focals
    if span < 2 or off > 10:
        hint = " (normalised? scale to pixels)" if span < 2 else ""
        raise InputError(f"{path}: the 2D poses span a median {span:.3g} px, {off:.3g} focal lengths off "
                         f"the principal point; expected pixels of the camera in 'camera' (fx fy cx cy), "
                         f"poses > 2 px within 10 focals{hint}")
    check_projection(path, "poses_3d", x2d, cam, dist, y3d)
    action = np.array(["all"] * n) if action is None else np.asarray(action).astype(str)
    return {"x2d": x2d, "cam": cam, "y3d": y3d, "action": action, "dist": dist}

def check_projection(path, key, x2d, cam, dist, y3d, most=20000,
                     hint="world coordinates, another joint order, x/y swapped or frames misaligned?"):
    """The camera model must fit the data (on up to `most` frames): the lens is invertible where the
    keypoints are, and 3D given with the 2D projects onto it, to within 10% of a pose's extent (the 2D
    may be a detector's). Distortion in another order, 3D in a world frame or another joint order, x/y
    swapped or frames misaligned are an error here rather than a silent bad fit."""
    i = np.unique(np.linspace(0, len(x2d) - 1, min(most, len(x2d))).astype(int))    # (n,) frames checked
    f, c = (torch.as_tensor(cam[i, None, k:k + 2], dtype=torch.float64) for k in (0, 2))  # (n,1,2)
    xd = (torch.as_tensor(x2d[i], dtype=torch.float64) - c) / f                   # (n,17,2) normalised
    lens = None if dist is None else torch.as_tensor(dist[i], dtype=torch.float64)  # (n,9)
    if lens is not None:
        miss = (distort(undistort(xd, lens), lens) - xd).norm(dim=-1) > 1e-3        # (n,17); NaN: not a miss
        if miss.float().mean() > 0.01:
            j = int(i[int(miss.any(-1).nonzero()[0])])
            raise InputError(f"{path}: the lens distortion cannot be inverted at {miss.float().mean():.0%} "
                             f"of the keypoints (e.g. frame {j}: radial k1 k2 k3 {np.round(dist[j, :3], 4).tolist()}); "
                             f"expected k1 k2 k3 p1 p2 of normalised coordinates in 'distortion' (VideoPose3D's "
                             f"order; OpenCV's k1 k2 p1 p2 k3 go in 'dist_coeffs'; Human3.6M's are all below 0.26)")
    if y3d is None:
        return
    xy = torch.as_tensor(y3d[i, :, :2] / y3d[i, :, 2:], dtype=torch.float64)     # (n,17,2)
    err = (((xy if lens is None else distort(xy, lens)) - xd) * f).norm(dim=-1).nanmean(-1)   # (n,) px
    span = np.nanmax(np.nanmax(x2d[i], 1) - np.nanmin(x2d[i], 1), -1)            # (n,) px
    off = np.nanmedian(err.numpy() / span)
    if off > 0.1:
        raise InputError(f"{path}: {key} does not project onto poses_2d through 'camera'"
                         f"{' and distortion' if dist is not None else ''}: a median {off:.0%} of a pose's "
                         f"extent off ({float(err.median()):.1f} px); expected camera coordinates of the same "
                         f"frames in H36M-17 order ({hint})")

def load_pose_npz(path, order=None):
    """Generic npz (see NPZ_LAYOUT) -> (split, subject array or None)."""
    z = common.load_npz(path, ["poses_2d"], NPZ_LAYOUT)
    cam, lens = camera_of(z, path, NPZ_LAYOUT)
    split = make_split(path, to_h36m(z["poses_2d"], layout_of(z, order, path, NPZ_LAYOUT)), cam,
                       z.get("poses_3d"), z.get("action"), dist=lens)
    subject = z["subject"].astype(str) if "subject" in z else None
    if subject is not None and subject.shape != (len(split["x2d"]),):
        raise InputError(f"{path}: 'subject' has shape {subject.shape}; expected (N,) strings ({NPZ_LAYOUT})")
    return split, subject

def load_memory(path):
    """--memory, or a folder's memory.npz: poses_3d (N,17,3) metres, finite; or VideoPose3D's
    data_3d_h36m.npz, whose training subjects (S1, S5-S8) are then the memory."""
    z = common.load_npz(path, (), MEMORY_LAYOUT, pickled=("positions_3d",))
    if "poses_3d" not in z and "positions_3d" in z:  # Human3.6M's mocap as the memory of other 2D
        pos3d = load_pickled_dict(path, "positions_3d")
        poses = [p for s in H36M_TRAIN for a, world in pos3d.get(s, {}).items()
                 if (p := h36m_poses(world, path, f"{s}/{a}")) is not None]
        if not poses:
            raise InputError(f"{path}: positions_3d holds no poses of the training subjects {' '.join(H36M_TRAIN)} "
                             f"(found {' '.join(map(str, pos3d)) or 'none'}); expected VideoPose3D's data_3d_h36m.npz")
        poses = np.concatenate(poses)
    elif "poses_3d" not in z:
        raise InputError(f"{path}: missing key(s) ['poses_3d']; found {sorted(z)} (expected {MEMORY_LAYOUT}, "
                         f"or VideoPose3D's data_3d_h36m.npz)")
    else:
        poses = check_poses(z["poses_3d"], path, "poses_3d", MEMORY_LAYOUT)
    if (poses - poses[:, :1]).std(0).max() < 1e-3:  # D would learn one pose
        again = f", repeated {len(poses)} times" if len(poses) > 1 else ""
        raise InputError(f"{path}: 'poses_3d' holds one pose{again}; expected a memory of varied poses "
                         f"({MEMORY_LAYOUT})")
    return poses

def check_poses(poses, path, key, what):
    """3D poses (N,17,3), finite, whose median bone is a human one (0.08-0.5 m; about 0.22 for an adult):
    centimetres, millimetres or collapsed joints are an error."""
    poses = common.check_array(poses, path, key, (None, NJ, 3), what)
    if not len(poses):
        raise InputError(f"{path}: '{key}' holds 0 poses; expected {what}")
    bones = np.linalg.norm(poses[:, 1:] - poses[:, PARENTS[1:]], axis=-1)                    # (N,16)
    bone = float(np.median(bones))
    if not 0.08 <= bone <= 0.5:
        scale = 10 ** round(np.log10(bone / 0.22)) if bone > 0.5 else 0                # 100: centimetres?
        unit = {10: "decimetres", 100: "centimetres", 1000: "millimetres"}.get(scale)
        raise InputError(f"{path}: '{key}' has a median bone length of {bone:.4g}, {bone / 0.22:.3g}x an adult's "
                         f"0.22 m; expected metres (a median bone of 0.08-0.5 m){f' - {unit}?' if unit else ''}")
    return poses

def load_pickled_dict(path, key):
    """VideoPose3D's `key` (a pickled dict subject -> action -> arrays) of an npz."""
    what = f"'{key}' as VideoPose3D's pickled dict subject -> action -> array(s)"
    obj = common.read_pickled(path, key, what)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: {key} holds {'a numeric array' if obj is None else type(obj).__name__}; "
                         f"expected {what}")
    for s, v in obj.items():
        if not isinstance(v, dict):
            raise InputError(f"{path}: {key}[{s!r}] is {type(v).__name__}, not a dict action -> array(s); "
                             f"expected {what}")
    return obj

def keypoint_layout(path):
    """The joint order of a VideoPose3D 2D file from its 'metadata' (none: h36m): 'h36m' or 'coco'
    (e.g. data_2d_h36m_detectron_pt_coco.npz, mapped to H36M-17 on loading)."""
    with zipfile.ZipFile(path) as zf:
        if "metadata.npy" not in zf.namelist():
            return "h36m"
    meta = common.read_pickled(path, "metadata", "'metadata' as VideoPose3D's dict (layout_name, num_joints, ...)")
    layout = str(meta.get("layout_name", "h36m")).lower() if isinstance(meta, dict) else None
    if layout not in ("h36m", "coco"):
        found = {k: meta.get(k) for k in ("layout_name", "num_joints")} if isinstance(meta, dict) else meta
        raise InputError(f"{path}: metadata {found}; expected 17 keypoints with layout_name 'h36m' or 'coco'")
    return layout

def camera_of(z, path, what):
    """A file's camera -> (cam (4,)|(N,4) fx fy cx cy, lens (9,)|(N,9) from lens_of, or None). 'camera' is fx fy
    cx cy or OpenCV's K (3,3)|(N,3,3), else 'image_size' (w, h) gives f = max(w, h) at the middle; the lens is
    'distortion' (VideoPose3D's k1 k2 k3 p1 p2 and model) or 'dist_coeffs' (OpenCV's k1 k2 p1 p2 [k3] and model)."""
    if "camera" not in z and "image_size" not in z:
        raise InputError(f"{path}: no 'camera' or 'image_size'; found {sorted(z)} (expected {what})")
    cam = common.as_numbers(z.get("camera", z.get("image_size")), path, "the camera", what)
    if "camera" not in z:
        w, h = common.check_array(cam, path, "image_size", (2,), what)
        if not (w > 0 and h > 0):
            raise InputError(f"{path}: 'image_size' is {w:g} x {h:g}; expected a positive width and height")
        cam = np.array([max(w, h), max(w, h), w / 2, h / 2])
    elif cam.shape[-2:] == (3, 3):  # K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
        if not (np.abs(cam[..., [0, 1, 2, 2], [1, 0, 0, 1]]).max() < 1e-3 and np.allclose(cam[..., 2, 2], 1)):
            raise InputError(f"{path}: 'camera' as K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew); "
                             f"found {cam.reshape(-1, 9)[0].round(4).tolist()}")
        cam = cam[..., [0, 1, 0, 1], [0, 1, 2, 2]]
    lens = z.get("distortion")
    if lens is not None:
        lens = common.check_array(lens, path, "distortion", (5,) if np.ndim(lens) == 1 else (None, 5), what)
        lens = lens_of(lens, "videopose3d")
    if "dist_coeffs" in z:
        d = common.as_numbers(z["dist_coeffs"], path, "'dist_coeffs'", what)
        if lens is not None or d.ndim not in (1, 2) or d.shape[-1] < 4:
            raise InputError(f"{path}: 'dist_coeffs' has shape {d.shape}{' beside distortion' * (lens is not None)}; "
                             f"expected OpenCV's k1 k2 p1 p2 [k3] (4 or 5 values, (N,4|5)), or 'distortion' alone")
        if np.abs(d[..., 5:]).max(initial=0) > 0:
            raise InputError(f"{path}: 'dist_coeffs' has non-zero terms after k3 ({d.shape[-1]} values: OpenCV's "
                             f"rational or thin-prism model), which this lens model lacks; expected k1 k2 p1 p2 [k3]")
        d = np.concatenate([d[..., :5], np.zeros(d.shape[:-1] + (max(0, 5 - d.shape[-1]),))], -1)
        lens = lens_of(d[..., [0, 1, 4, 2, 3]], "opencv")                          # as k1 k2 k3 p1 p2
    return cam, lens

def lens_of(coeffs, model):
    """Lens coefficients (...,5) k1 k2 k3 p1 p2 of VideoPose3D's Human3.6M model (its project_to_2d) or of
    OpenCV's -> the renderer's lens (...,9): k1 k2 k3, then T (2,3) row-major. Both models share the radial
    factor 1 + k1 r^2 + k2 r^4 + k3 r^6 and add a tangential shift T [x^2, xy, y^2]; their T differ, not only
    in the order of p1 p2 (VideoPose3D: x += p1 (r^2 + x^2) + p2 xy; OpenCV: x += 2 p1 xy + p2 (r^2 + 2 x^2))."""
    c = np.asarray(coeffs, np.float64)
    p1, p2 = c[..., 3], c[..., 4]
    T = [2 * p1, p2, p1, p2, p1, 2 * p2] if model == "videopose3d" else [3 * p2, 2 * p1, p2, p1, 2 * p2, 3 * p1]
    return np.concatenate([c[..., :3], np.stack(T, -1)], -1)

def layout_of(z, order, path, what):
    """The joint order of a file's 2D keypoints: --keypoint-order, else its 'layout', else h36m."""
    if (layout := order or str(z.get("layout", "h36m")).lower()) not in ("h36m", "coco"):
        raise InputError(f"{path}: 'layout' is {layout!r}; expected 'h36m' or 'coco' ({what})")
    return layout

def to_h36m(kp, layout="h36m"):
    """2D keypoints (N,17,2), or (N,17,3) with a detector's confidence (0: missing), in H36M-17 or COCO-17
    order -> (N,17,2) H36M-17, NaN = missing (a COCO-mapped joint is missing if one of its joints is).
    Other shapes pass unchanged, for make_split to name."""
    if kp.dtype.kind in "fiu" and kp.shape[1:] == (NJ, 3):
        kp = np.where(kp[..., 2:] > 0, kp[..., :2], np.nan)
    if layout == "coco" and kp.shape[1:] == (NJ, 2):  # each H36M joint: the mean of its COCO joints
        kp = np.stack([kp[:, idx].mean(1) for idx in COCO_TO_H36M], 1)
    return kp

def quat_to_matrix(q):
    """(qw, qx, qy, qz) -> (3,3) R; Human3.6M's orientations are camera-to-world."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

def h36m_poses(world, path, key):
    """One action of VideoPose3D's positions_3d: (N,32,3) world metres -> the 17 kept joints, None if empty."""
    world = common.as_numbers(world, path, key, "(N, 32, 3) metres", np.float32)
    if world.ndim == 3 and not len(world):
        return None
    return check_poses(world[:, H36M_KEEP] if world.shape[1:] == (32, 3) else world, path, key,
                       "all 32 or the 17 kept joints")

def load_h36m(folder, keypoints):
    """Human3.6M in VideoPose3D's layout -> train/test splits (S1,S5-S8 / S9,S11) and the memory."""
    p3, p2 = os.path.join(folder, "data_3d_h36m.npz"), os.path.join(folder, f"data_2d_h36m_{keypoints}.npz")
    if not os.path.isfile(p2):
        found = sorted(f[13:-4] for f in os.listdir(folder) if f.startswith("data_2d_h36m_")
                       and f.endswith(".npz"))
        raise InputError(f"{p2}: no such file (--keypoints {keypoints}); found --keypoints {found or 'none'}")
    pos3d, pos2d = load_pickled_dict(p3, "positions_3d"), load_pickled_dict(p2, "positions_2d")
    layout = keypoint_layout(p2)                                       # the 2D's joint order
    splits, memory = {}, []
    for role, subjects in (("train", H36M_TRAIN), ("test", H36M_TEST)):
        x2d, cams, dists, y3d, acts = [], [], [], [], []
        for s in subjects:
            if s not in pos3d or s not in pos2d:
                raise InputError(f"{p3} / {p2}: no subject {s} (found {sorted(pos3d)} / {sorted(pos2d)})")
            for action, world in pos3d[s].items():
                world = h36m_poses(world, p3, f"{s}/{action}")
                if world is None:
                    continue  # an action without frames adds nothing
                memory += [world] if role == "train" else []
                views = pos2d[s].get(action)
                if not isinstance(views, (list, tuple, np.ndarray)) or len(views) != 4:
                    found = "no such action" if views is None else type(views).__name__ + (
                        f" of {len(views)}" if hasattr(views, "__len__") else "")
                    raise InputError(f"{p2}: {s}/{action}: found {found}; expected 4 camera views of (N, 17, 2) "
                                     f"keypoints (its 2D actions: {', '.join(sorted(map(str, pos2d[s]))[:8])})")
                for c, kp in enumerate(views):
                    if s == "S11" and action == "Directions" and c == 0:
                        continue  # a known broken clip, dropped by convention
                    kp = common.as_numbers(kp, p2, f"{s}/{action} camera {c}", "(N, 17, 2)", np.float32)
                    if kp.ndim != 3 or kp.shape[1] != NJ or kp.shape[2] < 2:
                        raise InputError(f"{p2}: {s}/{action} camera {c} has shape {kp.shape}; expected "
                                         f"(N, 17, 2) in its metadata's layout, {layout}")
                    kp = to_h36m(kp[..., :2], layout)                               # (N,17,2) H36M-17
                    if len(kp) < len(world):
                        raise InputError(f"{p2}: {s}/{action} camera {c} has {len(kp)} frames of 2D, fewer than "
                                         f"the {len(world)} of its 3D in {p3}; expected at least as many")
                    n = len(world)  # some videos hold extra frames: trimmed, as VideoPose3D does
                    q, t = H36M_EXTRINSICS[s][c][:4], H36M_EXTRINSICS[s][c][4:] / 1000
                    x2d.append(kp[:n, :, :2])
                    y3d.append(((world[:n] - t) @ quat_to_matrix(q)).astype(np.float32))  # R^T (X - t)
                    cams.append(np.tile(H36M_INTRINSICS[c].astype(np.float32), (n, 1)))
                    dists.append(np.tile(lens_of(H36M_DISTORTION[c], "videopose3d"), (n, 1)).astype(np.float32))
                    check_projection(p2, f"{p3} {s}/{action}, camera {c},", x2d[-1], cams[-1], dists[-1],
                                     y3d[-1], most=500, hint="2D of other frames or subjects, or in another "
                                     "joint order than its metadata's layout?")
                    acts += [action.split(" ")[0]] * n
        if not x2d:
            raise InputError(f"{p3}: no frames for the {role} subjects {' '.join(subjects)}; expected (N, 32, 3) "
                             f"poses per action there and 4 views of (N, 17, 2) keypoints in {p2}")
        splits[role] = make_split(p2, np.concatenate(x2d), np.concatenate(cams), np.concatenate(y3d), acts,
                                  dist=np.concatenate(dists))
    return splits, np.concatenate(memory)

def h36m_elevations():
    """The (lowest, highest) elevation (degrees) of Human3.6M's training cameras, from their extrinsics."""
    el = [np.degrees(np.arcsin(-quat_to_matrix(e[:4])[2, 2])) for s in H36M_TRAIN for e in H36M_EXTRINSICS[s]]
    return float(min(el)), float(max(el))

def up_direction(memory):
    """The memory's world up (3,): the mean pelvis->thorax direction (most people are upright), snapped
    to a coordinate axis within 10 degrees of one (mocap's Y or Human3.6M's Z up)."""
    d = memory[:, 8] - memory[:, 0]
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True).clip(1e-9)).mean(0)
    d = d / np.linalg.norm(d)
    return np.sign(d) * (np.abs(d) == np.abs(d).max()) if np.abs(d).max() > np.cos(np.radians(10)) else d

def load_data(args, dist):
    """--data (without it the built-in folder, tools/pose_builtin.py) and --memory -> splits and memory."""
    path = args.data or common.builtin_dataset(__file__, "pose", "pose_builtin", dist)
    name, action_mean, memory, memory_src = os.path.basename(os.path.normpath(path)), False, None, None
    h36m = os.path.isfile(os.path.join(path, "data_3d_h36m.npz"))
    if h36m:
        splits, memory = load_h36m(path, args.keypoints)
        splits["val"], name, action_mean, memory_src = None, "h36m", True, f"the training subjects of {path}"
    elif os.path.isdir(path):
        if not all(os.path.exists(os.path.join(path, f"{r}.npz")) for r in ("train", "test")):
            raise InputError(f"{path}: expected train.npz and test.npz (and optional val.npz, memory.npz) in "
                             f"the generic layout, or Human3.6M's data_3d_h36m.npz + data_2d_h36m_<src>.npz; found "
                             f"{', '.join(sorted(os.listdir(path))[:10]) or 'nothing'}")
        splits = {r: load_pose_npz(os.path.join(path, f"{r}.npz"), args.keypoint_order)[0]
                  for r in ("train", "test")}
        val, memory_src = os.path.join(path, "val.npz"), os.path.join(path, "memory.npz")
        splits["val"] = load_pose_npz(val, args.keypoint_order)[0] if os.path.exists(val) else None
        memory = load_memory(memory_src) if os.path.exists(memory_src) else None
    else:  # one npz: hold out the last ~20% of subjects (or of frames) as the test split
        if name.startswith(("data_2d_h36m_", "data_3d_h36m")):
            raise InputError(f"{path}: a file of VideoPose3D's Human3.6M layout; pass its folder as --data (with "
                             f"data_3d_h36m.npz and data_2d_h36m_<--keypoints>.npz in it)")
        split, subj = load_pose_npz(path, args.keypoint_order)
        names = sorted(set(subj)) if subj is not None else []
        test = (np.isin(subj, names[-max(1, round(0.2 * len(names))):]) if len(names) >= 2
                else np.arange(len(split["x2d"])) >= int(0.8 * len(split["x2d"])))
        splits = {"val": None, **{role: {k: v if v is None else v[rows] for k, v in split.items()}
                                  for role, rows in (("train", ~test), ("test", test))}}
        if test.all():
            raise InputError(f"{path}: {len(test)} frame(s) of one subject leave no training frames after "
                             f"the last 20% are held out for testing; expected more frames or subjects")
    if args.memory:
        memory, memory_src = load_memory(args.memory), args.memory
    elevation = args.elevation or (h36m_elevations() if h36m else (-10.0, 40.0))
    return {**splits, "memory": memory, "memory_src": memory_src, "action_mean": action_mean,
            "name": "builtin" if args.data is None else name, "elevation": elevation}


# ----------------------------------------------------------------------------------------------
# Networks
def ray_rotation(c):
    """(B,2) normalised image points -> (B,3,3) rotations R (shortest arc) taking the ray (c, 1) to the
    optical axis: R is the camera -> virtual camera that looks straight at c (Rodrigues, v = r x z)."""
    r = F.normalize(torch.cat([c, torch.ones_like(c[:, :1])], 1), dim=1)          # (B,3) unit rays
    z = torch.zeros_like(r[:, 0])
    V = torch.stack([z, z, -r[:, 0], z, z, -r[:, 1], r[:, 0], r[:, 1], z], 1).view(-1, 3, 3)   # [v]x
    return torch.eye(3, dtype=c.dtype, device=c.device) + V + V @ V / (1 + r[:, 2, None, None])

def normalise_2d(x2d, cam, dist=None, ray=False):
    """Pixels -> the generator's scale-free input. x2d (B,17,2) pixels, NaN = missing joint, cam (B,4), dist
    (B,9) or None -> (inp (B,53), xn (B,17,2) observed normalised coordinates (x-cx)/fx, vis (B,17) bool,
    scale (B,) RMS 2D size, rot (B,3,3) or None). G sees the undistorted coordinates; with ray=True as a
    virtual camera turned by rot to look straight at the person sees them (G(inp, rot) rotates back)."""
    vis = torch.isfinite(x2d).all(-1)                                             # (B,17)
    xn = torch.where(vis[..., None], (x2d - cam[:, None, 2:]) / cam[:, None, :2], 0.0)
    xu = xn if dist is None else undistort(xn, dist)                              # (B,17,2) pinhole
    w = vis.float()
    mean = (xu * w[..., None]).sum(1) / w.sum(1, keepdim=True)                    # (B,2)
    centre = torch.where(vis[:, :1], xu[:, 0], mean)                              # pelvis if seen
    rot = ray_rotation(centre) if ray else None
    if ray:  # the rays (x, y, 1) in the virtual camera, projected again; the centre lands on (0, 0)
        h = torch.cat([xu, torch.ones_like(xu[..., :1])], -1) @ rot.transpose(1, 2)   # (B,17,3)
        d = h[..., :2] / h[..., 2:] * w[..., None]                                # (B,17,2)
    else:
        d = (xu - centre[:, None]) * w[..., None]                                 # (B,17,2)
    scale = ((d ** 2).sum((1, 2)) / w.sum(1)).sqrt().clamp_min(1e-6)              # (B,)
    inp = torch.cat([(d / scale[:, None, None]).flatten(1), w, centre], 1)        # (B, 17*2+17+2)
    return inp, xn, vis, scale, rot

class Generator(nn.Module):
    """Residual MLP lifter (Martinez et al. 2017 style) with a 2D skip connection: each joint's x, y are the
    observed 2D times a predicted size (metres) plus a learned correction, its depth is predicted: at init the
    pose roughly reprojects onto its input (x, y follow it; depth and a small correction start random), so
    learning is about depth and size, which only the memory can tell.
    Output: root-relative joints (metres), camera frame (with rot from normalise_2d: rotated back to it)."""

    def __init__(self, hidden=512, blocks=2):
        super().__init__()
        self.inp = nn.Linear(NJ * 3 + 2, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                                  nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
                                    for _ in range(blocks))
        self.out = nn.Linear(hidden, NJ * 3 + 1)

    def forward(self, inp, rot=None):                                             # (B, 53)
        h = F.leaky_relu(self.inp(inp), 0.2)
        for block in self.blocks:
            h = h + block(h)
        o = self.out(h)
        d2 = inp[:, :NJ * 2].view(-1, NJ, 2)                                      # (B,17,2) scale-free 2D
        size = 0.5 * torch.exp(o[:, -1:, None])     # (B,1,1) metres per unit: ~0.5 m, a person's RMS spread
        xy = size * d2 + 0.1 * o[:, :NJ * 2].view(-1, NJ, 2)   # (B,17,2); the correction starts small
        z = o[:, NJ * 2:NJ * 3, None]                                             # (B,17,1) depth
        pose = torch.cat([xy, z], -1)
        pose = pose - pose[:, :1]                                                 # (B,17,3), root at 0
        return pose if rot is None else pose @ rot

def canonicalise(pose):
    """(B,17,3) -> (B,17,3) in its own body frame (x: right->left hip, y: pelvis->thorax, z = x cross y): D
    judges the pose, not the camera. A proper rotation: a depth-flipped (mirrored) pose stays detectable."""
    p = pose - pose[:, :1]
    up = F.normalize(p[:, 8], dim=-1, eps=1e-6)                                   # (B,3)
    h = p[:, 4] - p[:, 1]
    x = F.normalize(h - (h * up).sum(-1, keepdim=True) * up, dim=-1, eps=1e-6)
    z = torch.cross(x, up, dim=-1)
    R = torch.stack([x, up, z], 1)                                                # (B,3,3) rows
    return p @ R.transpose(1, 2)

class Discriminator(nn.Module):
    """MLP on canonical joints, bone vectors and bone lengths: memory pose (1) vs prediction (0).
    With tilt=True it also sees the body's up direction (pelvis->thorax) in the camera frame, which
    the body frame hides: how the person stands relative to the camera (its elevation and roll)."""

    def __init__(self, hidden=512, tilt=True):
        super().__init__()
        self.tilt = tilt
        self.register_buffer("parents", torch.tensor(PARENTS[1:]), persistent=False)
        self.net = nn.Sequential(nn.Linear((NJ - 1) * 7 + 3 * tilt, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, pose):                                                      # (B,17,3) metres
        c = canonicalise(pose)
        bones = c[:, 1:] - c[:, self.parents]                                     # (B,16,3)
        feats = [c[:, 1:].flatten(1), bones.flatten(1), bones.norm(dim=-1)]
        if self.tilt:
            feats.append(F.normalize(pose[:, 8] - pose[:, 0], dim=-1, eps=1e-6))  # (B,3) camera-frame up
        return self.net(torch.cat(feats, 1)).squeeze(1)                           # (B,) logits

def build_nets(args, device):
    """G then D (this order fixes the seeded initialisation)."""
    return {"G": Generator(args.hidden, args.blocks).to(device),
            "D": Discriminator(tilt=args.tilt_prior == "elevation").to(device)}


# ----------------------------------------------------------------------------------------------
# Renderer
# P places the root-relative pose in front of the camera, projects it and applies the lens distortion.
def lens_terms(xy, dist):
    """For xy (B,J,2) and a lens dist (B,9) from lens_of: the radial factor 1 + k1 r^2 + k2 r^4 + k3 r^6
    (B,J,1) and the tangential shift T [x^2, xy, y^2] (B,J,2)."""
    r2 = xy.pow(2).sum(-1, keepdim=True)                                          # (B,J,1)
    radial = 1 + (dist[:, None, :3] * torch.cat([r2, r2 ** 2, r2 ** 3], -1)).sum(-1, keepdim=True)
    x, y = xy.unbind(-1)
    quad = torch.stack([x * x, x * y, y * y], -1)                                 # (B,J,3)
    return radial, (quad[:, :, None] * dist[:, None, 3:].view(-1, 1, 2, 3)).sum(-1)      # (B,J,2)

def distort(xy, dist):
    """The lens on normalised coordinates: xy (B,J,2) = (X/Z, Y/Z), clamped to [-1, 1] as VideoPose3D does,
    dist (B,9) from lens_of (VideoPose3D's Human3.6M model or OpenCV's) -> xy radial + T [x^2, xy, y^2]."""
    radial, shift = lens_terms(xy.clamp(-1, 1), dist)
    return xy.clamp(-1, 1) * radial + shift

def undistort(xd, dist, iters=20):
    """The inverse of distort by fixed-point iteration, for observations (B,J,2) (not differentiated)."""
    xu = xd
    for _ in range(iters):  # xd = xu radial(xu) + shift(xu)  ->  xu = (xd - shift(xu)) / radial(xu)
        radial, shift = lens_terms(xu, dist)
        xu = (xd - shift) / radial
    return xu

def through_cameras(poses, up, yaw, elevation):
    """Not P, but beside it: D's memory seen through random cameras (--tilt-prior elevation). Memory poses
    (B,17,3) in their world frame, whose up is `up` (3,), as cameras of yaw (B,) and
    elevation (B,) radians see them (x right, y down, z forward; elevation > 0: looking down), root at 0:
    R = Rx(elevation) Ry(yaw) A, with A taking `up` to the camera's -y."""
    a = F.one_hot(torch.argmin(up.abs()), 3).to(poses.dtype)                      # (3,) axis least along up
    e1 = F.normalize(a - (a @ up) * up, dim=0)
    A = torch.stack([e1, -up, torch.cross(e1, -up, dim=0)])                       # (3,3) proper rotation
    c, s, o, z = yaw.cos(), yaw.sin(), torch.ones_like(yaw), torch.zeros_like(yaw)
    Ry = torch.stack([c, z, s, z, o, z, -s, z, c], -1).view(-1, 3, 3)             # (B,3,3)
    c, s = elevation.cos(), elevation.sin()
    Rx = torch.stack([o, z, z, z, c, -s, z, s, c], -1).view(-1, 3, 3)
    return (poses - poses[:, :1]) @ (Rx @ Ry @ A).transpose(1, 2)                  # (B,17,3)

def place_and_project(pose, xn, vis, camera="perspective", dist=None):
    """The AIGN renderer for poses (no parameters). pose (B,17,3) root-relative metres, xn (B,17,2) observed
    normalised coordinates, vis (B,17), dist (B,9) or None. The translation t (B,3) that best places the pose
    is solved in closed form on the undistorted observations (least squares over visible joints: x_j (Z_j +
    tz) = X_j + tx; weak perspective: x_j tz = X_j + tx). Returns the projection (B,17,2) (distorted), t."""
    xn = xn if dist is None else undistort(xn, dist)                              # (B,17,2) pinhole
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
    return (proj if dist is None else distort(proj, dist)), t


# ----------------------------------------------------------------------------------------------
# Losses
def reprojection_loss(proj, xn, vis, scale):
    """l_rec(P(G(x)), x): squared 2D error over visible joints, in units of the person's 2D size."""
    err = ((proj - xn) / scale[:, None, None]).pow(2).sum(-1)                     # (B,17)
    return (err * vis).sum() / vis.sum().clamp_min(1)

def d_loss(D, real, fake, gan):
    """Discriminator: memory samples are real, predictions fake (same shapes)."""
    logits = D(torch.cat([real, fake]))
    lr, lf = logits[:len(real)], logits[len(real):]
    if gan == "bce":  # -log D(y_mem) - log(1 - D(G(x))): the paper's loss
        return F.softplus(-lr).mean() + F.softplus(lf).mean()
    if gan == "lsgan":  # least squares (Mao et al. 2017)
        return 0.5 * ((lr - 1) ** 2).mean() + 0.5 * (lf ** 2).mean()
    # WGAN-GP (Gulrajani et al. 2017): the critic's gap plus a gradient penalty on interpolates
    alpha = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)
    return lf.mean() - lr.mean() + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

def g_adv_loss(D, fake, gan):
    """Generator's adversarial term: make predictions look like memory samples."""
    logits = D(fake)
    if gan == "bce":  # non-saturating -log D(G(x))
        return F.softplus(-logits).mean()
    if gan == "lsgan":
        return 0.5 * ((logits - 1) ** 2).mean()
    return -logits.mean()


# ----------------------------------------------------------------------------------------------
# Evaluation and figures
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

def pixel_error(proj, x2d, cam):
    """Mean distance (pixels) between rendered normalised coordinates (N,17,2) and the observed
    keypoints x2d (N,17,2) over the observed joints."""
    err = ((proj - (x2d - cam[:, None, 2:]) / cam[:, None, :2]) * cam[:, None, :2]).norm(dim=-1)   # (N,17)
    return float(err[torch.isfinite(err)].mean())

@torch.no_grad()
def predict(G, split, args, device, batch=4096):
    """A split's x2d (N,17,2) pixels, cam (N,4), dist (N,9) or None -> root-relative poses (N,17,3),
    placed camera-frame poses (N,17,3) and their rendering P(G(x)) in normalised coordinates (N,17,2)."""
    G.eval()
    out = []
    for i in range(0, len(split["x2d"]), batch):
        xb, cb, db = (None if split[k] is None else torch.as_tensor(split[k][i:i + batch], device=device)
                      for k in ("x2d", "cam", "dist"))                        # (b,17,2), (b,4), (b,9)
        inp, xn, vis, _, rot = normalise_2d(xb, cb, db, args.lift_frame == "ray")
        pose = G(inp, rot)
        pr, t = place_and_project(pose, xn, vis, args.camera, db)
        out.append((pose.cpu(), (pose + t[:, None]).cpu(), pr.cpu()))
    G.train()
    return tuple(torch.cat(o) for o in zip(*out))

def evaluate(G, split, args, device, action_mean):
    """Metrics of G on a split with 3D truth, overall and per action, plus the cameras' check gt_reproj_px
    (the true camera-frame 3D through the given camera and lens vs the given 2D, pixels: ~0 if the cameras
    are right) and reproj_px (the renderer's P(G(x)) vs the given 2D)."""
    pred, _, proj = predict(G, split, args, device)
    gt = torch.as_tensor(split["y3d"] - split["y3d"][:, :1])                                # root-relative
    x2d, cam, y3d = (torch.as_tensor(split[k]) for k in ("x2d", "cam", "y3d"))
    xy = y3d[..., :2] / y3d[..., 2:]                                                 # (N,17,2) pinhole
    xy = xy if split["dist"] is None else distort(xy, torch.as_tensor(split["dist"]))
    px = {"gt_reproj_px": pixel_error(xy, x2d, cam), "reproj_px": pixel_error(proj, x2d, cam)}
    errs = {"mpjpe": mpjpe(pred, gt), "p_mpjpe": p_mpjpe(pred, gt), "n_mpjpe": n_mpjpe(pred, gt)}
    actions = sorted(set(split["action"]))
    per_action = {a: {k: float(v[torch.as_tensor(split["action"] == a)].mean()) for k, v in errs.items()}
                  for a in actions}
    # overall: the mean over actions on Human3.6M (its protocol), over frames elsewhere
    overall = {k: float(np.mean([per_action[a][k] for a in actions]) if action_mean else v.mean())
               for k, v in errs.items()}
    return {**overall, **px, "per_action": per_action}

def validate(G, data, args, device):
    """The metrics logged during training: val_* on the validation split, test_* if there is none."""
    tag = "val" if data["val"] is not None else "test"
    m = evaluate(G, data[tag], args, device, data["action_mean"]) if data[tag]["y3d"] is not None else {}
    return {f"{tag}_{k}": v for k, v in m.items() if k != "per_action"}

def figures():
    """tools/pose_figures.py (samples.png, turntable.gif, predictions.png), or None in a copied script."""
    tool = common.optional_tool(__file__, "pose_figures")
    if tool is None:
        common.log("figures skipped: tools/pose_figures.py is not beside the script")
    return tool


# ----------------------------------------------------------------------------------------------
# Training
def training_set(args, data, device):
    """What the training draws from, on the device once (each step gathers its rows), checked first."""
    tr, memory, B = data["train"], data["memory"], args.batch_size
    n_unpaired = B if args.lambda_rec > 0 or args.lambda_adv > 0 else 0
    # the paired subset: the first --paired-frac of the training frames in file order (whole sequences
    # of the first subjects, as when a lab labels a few sessions; cf. the "10% of S1" protocols), of
    # the --paired-actions' frames only if given (e.g. synthetic clips, whose labels cost nothing)
    if set(args.paired_actions or ()) - set(tr["action"]):
        raise InputError(f"--paired-actions {' '.join(args.paired_actions)}: the training frames' actions "
                         f"are {' '.join(sorted(set(tr['action'])))}")
    pool = np.flatnonzero(np.isin(tr["action"], args.paired_actions or np.unique(tr["action"])))   # (Nq,)
    n_paired = int(round(args.paired_frac * len(pool))) if args.lambda_sup > 0 else 0
    if not (n_unpaired or n_paired):
        raise InputError("nothing to train: set --lambda-rec/--lambda-adv or --paired-frac/--lambda-sup > 0")
    if n_paired and tr["y3d"] is None:
        raise InputError(f"--paired-frac {args.paired_frac} needs poses_3d in the training data "
                         f"({args.data or 'the built-in data'} has none)")
    if args.lambda_adv > 0 and memory is None:
        raise InputError(f"--data {args.data} brings no 3D memory: pass --memory, {MEMORY_LAYOUT}")
    if args.lambda_adv > 0 and len(memory) < B:
        raise InputError(f"--memory {data['memory_src']}: {len(memory)} poses, fewer than --batch-size {B}; "
                         f"pass a larger --memory or a smaller --batch-size")
    y3d = torch.as_tensor(tr["y3d"][pool[:n_paired]], device=device) if n_paired else None   # (Np,17,3)
    return {**{k: torch.as_tensor(tr[k], device=device) for k in ("x2d", "cam")},      # (N,17,2), (N,4)
            "dist": None if tr["dist"] is None else torch.as_tensor(tr["dist"], device=device),  # (N,9)
            "memory": None if memory is None else torch.as_tensor(memory, device=device),   # (M,17,3)
            "up": None if memory is None else torch.as_tensor(up_direction(memory), device=device),  # (3,)
            "n_unpaired": n_unpaired, "paired": torch.as_tensor(pool[:n_paired]),    # (Np,) rows, CPU
            # beside the unpaired terms each training frame counts once: the paired term weighs the
            # labelled share of the frames (a few labelled sessions must not outweigh all 2D inputs)
            "sup_w": n_paired / len(tr["x2d"]) if n_unpaired else 1.0,
            "y_rel": None if y3d is None else y3d - y3d[:, :1]}                        # root-relative

def draw_batch(data, gen, args, dist):
    """The global batch, drawn alike on every rank from `gen`; each rank keeps its slice. Returns
    the 2D rows (unpaired first, then paired) with their cameras, memory poses, paired 3D targets."""
    t, B, nu = data["train_set"], args.batch_size, data["train_set"]["n_unpaired"]
    mine = slice(dist.rank * B, (dist.rank + 1) * B)                            # this rank's rows
    draw = lambda n: torch.randint(n, (B * dist.world,), generator=gen)[mine]  # noqa: E731
    uniform = lambda lo, hi: lo + (hi - lo) * torch.rand(B * dist.world, generator=gen)[mine]  # noqa: E731

    iu = draw(len(t["x2d"]))
    im = draw(len(t["memory"])) if t["memory"] is not None else None
    ip = draw(len(t["y_rel"])) if t["y_rel"] is not None else iu[:0]
    rows, real = torch.cat([iu[:nu], t["paired"][ip]]), None if im is None else t["memory"][im]
    if real is not None and args.tilt_prior == "elevation":  # the memory seen through random cameras
        lo, hi = np.radians(data["elevation"])
        real = through_cameras(real, t["up"], uniform(0, 2 * np.pi).to(real), uniform(lo, hi).to(real))
    x2d = t["x2d"][rows]                                                                # (nu+Bp,17,2)
    if args.joint_dropout > 0:  # joints a detector missed: G learns to place them from the others
        hide = torch.cat([torch.rand(B * dist.world, NJ, generator=gen)[mine][:n] < args.joint_dropout
                          for n in (nu, len(rows) - nu) if n]).to(x2d.device)          # (nu+Bp,17)
        hide &= ~hide.all(1, keepdim=True)  # never a whole pose
        x2d = x2d.masked_fill(hide[..., None], float("nan"))
    return {"x2d": x2d, "cam": t["cam"][rows], "n_unpaired": nu,                        # (nu+Bp,17,2)
            "dist": None if t["dist"] is None else t["dist"][rows],                     # (nu+Bp,9)
            "real": real,                                                               # (B,17,3)
            "y3d": t["y_rel"][ip] if t["y_rel"] is not None else None, "sup_w": t["sup_w"]}  # (Bp,17,3)

def train_step(nets, opts, batch, args, dist, step):
    """One D step, then one G step. Returns the losses as 0-d float64 tensors (0.0 where a term is off),
    read on the host only every --eval-every steps: no .item() here, so on CUDA the host can queue ahead."""
    G, D, nu = nets["G"], nets["D"], batch["n_unpaired"]
    lens = None if batch["dist"] is None else batch["dist"][:nu]              # the lens distortion, if any
    inp, xn, vis, scale, rot = normalise_2d(batch["x2d"], batch["cam"], batch["dist"],  # G's input,
                                            args.lift_frame == "ray")                 # the observations
    losses = dict.fromkeys(("loss_d", "loss_rec", "loss_adv", "loss_sup"), 0.0)
    if args.lambda_adv > 0:
        with torch.no_grad():
            fake = G(inp[:nu], None if rot is None else rot[:nu])            # (B,17,3)
        # D learns to tell memory poses (real) from predictions (fake)
        loss_d = d_loss(D, batch["real"], fake, args.gan)
        common.optimiser_step(opts["D"], loss_d, dist, D)                    # plumbing: the D update
        losses["loss_d"] = loss_d.detach().double()
    pose = G(inp, rot)                                                        # (nu+Bp,17,3) root-relative
    loss_g = pose.new_zeros(())
    if nu:
        # (i) renderer: P(G(x)) must reproduce the observed 2D keypoints
        proj, _ = place_and_project(pose[:nu], xn[:nu], vis[:nu], args.camera, lens)
        loss_rec = reprojection_loss(proj, xn[:nu], vis[:nu], scale[:nu])
        loss_g = loss_g + args.lambda_rec * loss_rec
        losses["loss_rec"] = loss_rec.detach().double()
        if args.lambda_adv > 0:
            # (ii) adversarial prior: predictions must look like poses of the memory
            loss_adv = g_adv_loss(D, pose[:nu], args.gan)
            loss_g = loss_g + args.lambda_adv * loss_adv
            losses["loss_adv"] = loss_adv.detach().double()
    if batch["y3d"] is not None:
        # paired supervision where labels exist: ||G(x) - y||^2 on root-relative joints (metres)
        loss_sup = (pose[nu:] - batch["y3d"]).pow(2).sum(-1).mean()
        loss_g = loss_g + args.lambda_sup * batch["sup_w"] * loss_sup          # x labelled share
        losses["loss_sup"] = loss_sup.detach().double()
    common.optimiser_step(opts["G"], loss_g, dist, G)                        # plumbing: the G update
    return losses

def train(args, dist, data, nets, opts, state, run_dir):
    """D and G steps for --steps in total; every --eval-every steps: checkpoint, then validate."""
    gen = torch.Generator().manual_seed(args.seed)            # draws every batch, alike on all ranks
    ts = data["train_set"]
    rows = ts["n_unpaired"] + (args.batch_size if ts["y_rel"] is not None else 0)   # 2D rows a step, per rank
    start, wall_s, samples = 0, 0.0, 0
    if state is not None:
        start, wall_s, samples = common.restore_training(state, nets, opts, gen, args.resume)
    def finish(record):  # a record's validation metrics, logged
        record.update(validate(nets["G"], data, args, dist.device))
        common.log(common.format_record(record), dist)
        return record
    metrics = common.MetricsLog(run_dir, state, enabled=dist.main, finish=finish)
    stop, sums, n = common.StopRequest(), {}, 0
    t0 = time.perf_counter()
    for step in common.progress(start, args.steps, dist, args.no_progress):
        for k, v in train_step(nets, opts, draw_batch(data, gen, args, dist), args, dist, step).items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        done = step + 1
        stopping = dist.any(stop.requested)                   # all ranks stop together
        if done % args.eval_every == 0 or done == args.steps or stopping:
            common.sync(dist.device)
            wall_s, samples = wall_s + time.perf_counter() - t0, samples + n * rows * dist.world
            common.stop_if_diverged(sums, done, dist, nets)   # NaN: one clear error, no bad checkpoint
            record = {"step": done, **{k: dist.mean(v / n) for k, v in sums.items()},
                      "wall_s": round(wall_s, 2)}
            if dist.main:  # the checkpoint first: an evaluation that fails loses no training
                common.save_checkpoint(os.path.join(run_dir, "ckpt.pt"), script=SCRIPT, step=done, args=args,
                                       nets=nets, opts=opts, data_rng=gen, wall_s=wall_s, samples=samples,
                                       record=record)
                metrics.write(finish(record))
            dist.barrier()
            sums, n, t0 = {}, 0, time.perf_counter()
            if stopping:
                common.log(f"stopped at step {done}; continue with --resume {run_dir}/ckpt.pt", dist)
                return None
    return {"steps": args.steps, "wall_s": round(wall_s, 2),
            "samples_per_s": round(samples / wall_s, 1) if wall_s > 0 else None}


# ----------------------------------------------------------------------------------------------
# Prediction
KEYPOINTS_LAYOUT = ("'keypoints' (N,17,2 or 3) pixels in H36M-17 or COCO-17 order, plus 'camera' "
                    "(fx, fy, cx, cy, or K) or 'image_size' (w, h), optional 'distortion' (k1 k2 k3 p1 p2) or "
                    "OpenCV's 'dist_coeffs' (k1 k2 p1 p2 [k3])")

def load_keypoints(path, order):
    """--predict FILE, npz or JSON (KEYPOINTS_LAYOUT) -> a split without 3D."""
    npz = zipfile.is_zipfile(path) or path.lower().endswith((".npz", ".npy"))     # else JSON, whatever its name
    z = common.load_npz(path, ()) if npz else common.read_json(path, KEYPOINTS_LAYOUT)
    if not (isinstance(z, dict) and {"keypoints", "poses_2d"} & set(z) and {"camera", "image_size"} & set(z)):
        raise InputError(f"{path}: found {sorted(z) if isinstance(z, dict) else type(z).__name__}; expected "
                         f"{KEYPOINTS_LAYOUT}")
    kp = common.as_numbers(z.get("keypoints", z.get("poses_2d")), path, "'keypoints'", KEYPOINTS_LAYOUT)
    kp = kp[None] if kp.ndim == 2 else kp                                                  # (N,17,2|3)
    if kp.ndim != 3 or kp.shape[1] != NJ or kp.shape[2] not in (2, 3):
        raise InputError(f"{path}: keypoints have shape {kp.shape}; expected {KEYPOINTS_LAYOUT}")
    kp = to_h36m(kp, layout_of(z, order, path, KEYPOINTS_LAYOUT))                  # (N,17,2) H36M-17
    cam, lens = camera_of(z, path, KEYPOINTS_LAYOUT)
    return make_split(path, kp, cam, action=z.get("subject"), what=KEYPOINTS_LAYOUT, dist=lens)  # its clips

def run_predict(args, dist, G, run_dir, trained_dropout=0.0):
    """Lift --predict's keypoints: predictions.npz/.json (camera-frame poses) and predictions.png."""
    split = load_keypoints(args.predict, args.keypoint_order)
    gaps = int(np.isnan(split["x2d"]).any(-1).any(-1).sum())
    if gaps and not trained_dropout:  # data/pose_s11/results.md: 2 of 17 missing took val 45 -> 112 mm
        common.log(f"note: {gaps} of {len(split['x2d'])} frames miss joints, and this G was trained on complete "
                   f"2D (--joint-dropout 0): expect larger errors there; a G trained with --joint-dropout 0.03-0.1 "
                   f"copes better", dist)
    rel, placed = (p.numpy() for p in predict(G, split, args, dist.device)[:2])
    np.savez(os.path.join(run_dir, "predictions.npz"), poses_3d=placed, poses_3d_root_relative=rel,
             camera=split["cam"], clip=split["action"])                   # clip: the input's subject, else all
    common.write_json(os.path.join(run_dir, "predictions.json"), {
        "joints": JOINTS, "units": "metres, camera coordinates (x right, y down, z forward)",
        "poses_3d": placed.round(4).tolist()})
    if figures():
        figures().predictions(os.path.join(run_dir, "predictions.png"), split["x2d"][:4], rel[:4])
    common.log(f"wrote {len(rel)} poses to {run_dir}/predictions.npz and .json", dist)


# ----------------------------------------------------------------------------------------------
# Main
SCRIPT = "pose_aign"
ARCH = ("hidden", "blocks", "camera", "tilt_prior", "lift_frame")    # args a checkpoint fixes

def main(argv=None):
    args = get_args(argv)
    dist = common.Dist(args.device)
    state = common.load_checkpoint(args.resume, SCRIPT, nets=("G", "D")) if args.resume else None
    if state is not None:
        common.resume_args(args, state, argv, ARCH, args.resume)
        args = common.checked_args(args, get_args, args.resume)
    common.seed_everything(args.seed, args.deterministic)    # same seed on every rank: same init
    run_dir = common.make_run_dir(args, SCRIPT, dist)        # eval-only/predict get their own folder
    nets = build_nets(args, dist.device)
    if args.predict or args.eval_only:
        common.load_weights(nets["G"], state["nets"]["G"], args.resume, "G")
    if args.predict:
        if dist.main:
            run_predict(args, dist, nets["G"], run_dir, state["args"].get("joint_dropout", 0.0))
        return
    data = load_data(args, dist)
    n_mem = 0 if data["memory"] is None else len(data["memory"])
    common.log(f"data {data['name']}: {len(data['train']['x2d'])} train 2D, {n_mem} memory 3D, "
               f"{len(data['test']['x2d'])} test; run folder {run_dir}", dist)
    if args.eval_only:
        stats = {"eval_only": True, "checkpoint": os.path.abspath(args.resume), "step": state["step"]}
    else:
        data["train_set"] = training_set(args, data, dist.device)
        opts = {k: torch.optim.Adam(m.parameters(), lr=args.lr, betas=(0.5, 0.999))  # DCGAN's betas
                for k, m in nets.items()}
        stats = train(args, dist, data, nets, opts, state, run_dir)
    if stats is None or not dist.main:
        return
    test = data["test"]
    results = {"dataset": data["name"], "split": "test", "n_test": len(test["x2d"]), **stats}
    if test["y3d"] is not None:
        results.update(evaluate(nets["G"], test, args, dist.device, data["action_mean"]))
    common.log(" ".join(f"test {k} {results[k]:.1f} mm" for k in ("mpjpe", "p_mpjpe", "n_mpjpe")
                        if k in results) or "test split has no poses_3d: metrics skipped", dist)
    common.write_json(os.path.join(run_dir, "results.json"), results)
    if figures():  # fixed test samples: input 2D | prediction | ground truth
        figures().samples(run_dir, test, lambda sub: predict(nets["G"], sub, args, dist.device)[0].numpy())


if __name__ == "__main__":
    common.run_main(main)
