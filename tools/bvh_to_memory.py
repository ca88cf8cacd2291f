"""BVH mocap -> a pose_aign.py memory npz: poses_3d (N,17,3) metres on the H36M-17 skeleton (Y up),
plus clip (N,) = the BVH file's name. Joints: CMU's names (cgspeed's conversion) map as the shipped data;
other skeletons (Mixamo, LaFAN1, SMPL exports, 3ds Max Biped...) by name (side + limb part, Hips, Neck, Head,
HeadTop or the head's end site; the spine halfway up the torso), printed once per skeleton; --joint-map
JOINT=NAME names what the names do not tell. Units: --unit-m metres per BVH unit (default 0.0564, CMU's: the shipped subject 01 then stands
~1.5 m; 0.01 for centimetres, 0.0254 for inches, 1 for metres); bones outside a person's size are an error.
Up: Y (--up z for Z-up exports). Position channels give a joint's local position (they replace its OFFSET, as
Blender and MotionBuilder read them); rotation channels apply in each joint's own order (intrinsic).

    python3 tools/bvh_to_memory.py cmu_bvh/ --out memory.npz        # a folder and/or .bvh files
    python3 pose_aign.py --data poses.npz --memory memory.npz

The shipped data/cmu_h36m17.npz (the built-in dataset's real poses) is rebuilt with
    python3 tools/bvh_to_memory.py ../shared/data/cmu/01_01.bvh ../shared/data/cmu/01_03.bvh \\
        --out data/cmu_h36m17.npz --source "CMU mocap subject 01 trials 01, 03 (mocap.cs.cmu.edu; NSF EIA-0196217)"
Licence of that source: CMU Graphics Lab Motion Capture Database, free for research and commercial
use ("The data used in this project was obtained from mocap.cs.cmu.edu. The database was created
with funding from NSF EIA-0196217."); BVH conversion by B. Hahne (cgspeed), no added restrictions.
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
from common import InputError  # noqa: E402

NJ = 17  # H36M-17 (VideoPose3D order), as in pose_aign.py
# CMU BVH joint -> H36M-17 joint ("<name>_end" is the end site below <name>). CMU's Neck sits on
# Spine1 (zero offset), so the thorax is Neck1, at shoulder height.
CMU_TO_H36M = {"Hips": 0, "RightUpLeg": 1, "RightLeg": 2, "RightFoot": 3, "LeftUpLeg": 4, "LeftLeg": 5,
               "LeftFoot": 6, "Spine1": 7, "Neck1": 8, "Head": 9, "Head_end": 10, "LeftArm": 11,
               "LeftForeArm": 12, "LeftHand": 13, "RightArm": 14, "RightForeArm": 15, "RightHand": 16}
# Other skeletons (Mixamo, LaFAN1, SMPL/AMASS exports, 3ds Max Biped, Daz's CMU...) are mapped by name:
# a side (left/right/l/r, before or after) with a limb part, the first part of its list found winning (a
# LeftAnkle above a LeftFoot is the ankle; CMU's LeftShoulder is the clavicle, its LeftArm the shoulder);
# namespaces ("mixamorig:") and prefixes ("Bip01 ") are ignored.
JOINTS = ["pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
          "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"]  # H36M-17
PARTS = {"hip": ["upleg", "thigh", "upperleg", "hip"], "knee": ["knee", "leg", "shin", "calf", "lowerleg", "lowleg"],
         "ankle": ["ankle", "foot"], "shoulder": ["arm", "upperarm", "shldr", "humerus", "shoulder"],
         "elbow": ["elbow", "forearm", "lowerarm"], "wrist": ["wrist", "hand"]}
SIDES = {"r": ["right", "r"], "l": ["left", "l"]}
CMU_UNIT_M = 0.0564  # CMU BVH units -> metres (CMU's mocap unit; the shipped subject 01 stands ~1.5 m)


def read_bvh(path):
    """Parse a BVH file. Returns (names, parents, offsets (J,3), channels [list of names per joint],
    motion (F, C) float64). End sites are joints named '<parent>_end' with no channels."""
    text = common.read_text(path, "a BVH file")
    if "HIERARCHY" not in text or "MOTION" not in text:
        raise InputError(f"{path}: not a BVH file (expected HIERARCHY ... MOTION sections)")
    head, motion_text = text.split("MOTION", 1)
    names, parents, offsets, channels, stack = [], [], [], [], []
    try:
        _parse_hierarchy(_tokens(head), names, parents, offsets, channels, stack)
    except (IndexError, ValueError):
        raise InputError(f"{path}: malformed HIERARCHY after {len(names)} joint(s) (expected ROOT/JOINT/End Site "
                         f"blocks with OFFSET x y z and CHANNELS n ...)") from None
    if any(o is None for o in offsets):
        raise InputError(f"{path}: a joint has no OFFSET in the HIERARCHY")
    head_lines = [ln.strip() for ln in motion_text.strip().splitlines()]
    at = [i for i, ln in enumerate(head_lines) if ln.startswith("Frame Time:")]
    declared = [ln.split(":")[1].strip() for ln in head_lines[:at[0] if at else 0] if ln.startswith("Frames:")]
    if not at or not declared or not declared[0].isdigit():
        raise InputError(f"{path}: MOTION lacks its 'Frames: N' and 'Frame Time: T' lines (expected them before "
                         f"the rows)")
    lines = [ln for ln in head_lines[at[0] + 1:] if ln]
    if len(lines) != int(declared[0]):  # exporters miscount; a truncated copy holds fewer
        print(f"note: {path}: MOTION declares Frames: {declared[0]} but holds {len(lines)} rows (all are read; "
              f"a truncated file?)")
    if not lines:
        raise InputError(f"{path}: MOTION holds no frames (expected one row of channel values per frame)")
    n_ch = sum(len(c) for c in channels)
    try:
        motion = np.array([[float(v) for v in ln.split()] for ln in lines], dtype=np.float64)
    except ValueError:
        raise InputError(f"{path}: MOTION section holds non-numeric values or rows of unequal length") from None
    if motion.ndim != 2 or motion.shape[1] != n_ch:
        raise InputError(f"{path}: MOTION rows have {motion.shape[-1] if motion.size else 0} values, "
                         f"the HIERARCHY declares {n_ch} channels")
    common.check_finite(motion, path, "MOTION", "finite channel values")
    return names, parents, np.array(offsets, dtype=np.float64), channels, motion


def _tokens(head):
    """HIERARCHY text -> tokens; a ROOT/JOINT name is every word up to its "{" (3ds Max: 'Bip01 L Thigh')."""
    words, tokens = head.replace("{", " { ").replace("}", " } ").split(), []
    i = 0
    while i < len(words):
        tokens.append(words[i])
        if words[i] in ("ROOT", "JOINT"):
            n = words.index("{", i) if "{" in words[i:] else len(words)
            tokens.append(" ".join(words[i + 1:n]))
            i = n - 1
        i += 1
    return tokens


def _parse_hierarchy(tokens, names, parents, offsets, channels, stack):
    """Fill the joint lists from the HIERARCHY tokens (a small stack machine over { and })."""
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("ROOT", "JOINT", "End"):  # "End Site" is named after its parent
            names.append(tokens[i + 1] if tok != "End" else names[stack[-1]] + "_end")
            parents.append(stack[-1] if stack else -1)
            offsets.append(None)
            channels.append([])
            i += 2
        elif tok == "{":
            stack.append(len(names) - 1)
            i += 1
        elif tok == "}":
            stack.pop()
            i += 1
        elif tok == "OFFSET":
            offsets[stack[-1]] = [float(v) for v in tokens[i + 1:i + 4]]
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            channels[stack[-1]] = tokens[i + 2:i + 2 + n]
            i += 2 + n
        else:
            i += 1


def euler_matrix(axis, deg):
    """(F,) degrees -> (F, 3, 3) rotation about 'X', 'Y' or 'Z'."""
    a = np.radians(deg)
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    m = {"X": [[o, z, z], [z, c, -s], [z, s, c]], "Y": [[c, z, s], [z, o, z], [-s, z, c]],
         "Z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis]
    return np.moveaxis(np.array(m), [0, 1], [-2, -1])


def _key(name):
    """A joint name without its namespace, case and separators: 'mixamorig:Left_UpLeg' -> 'leftupleg'."""
    return "".join(c for c in name.split(":")[-1].lower() if c.isalnum())


def _limb(key):
    """'leftupleg' -> ('l', 'hip', rank of the part in PARTS['hip']); the longest part named wins
    ('upperlegl' is a hip, not a knee 'leg'); None if the name holds no side + limb part at its end."""
    hits = [(len(part), side, role, PARTS[role].index(part)) for role in PARTS for part in PARTS[role]
            for side in SIDES for s in SIDES[side] if key.endswith(s + part) or key.endswith(part + s)]
    return max(hits)[1:] if hits else None


def skeleton_map(names, parents, offsets, path, joint_map=None):
    """H36M-17 joints from a BVH skeleton: (17 recipes (i, j, w), each the point (1 - w) p_i + w p_j; a text
    naming the joints used). CMU's own names (cgspeed) map as CMU_TO_H36M; others by name: the limbs by
    side and part, the pelvis (Hips/Pelvis, else the root), neck_nose (Head), the thorax (the lowest Neck
    below the head not at its parent's place), the head top (HeadTop/HeadNub or the head's end site), the
    spine halfway along the chain pelvis -> thorax. joint_map {H36M joint: BVH joint name} overrides any."""
    idx = {n: i for i, n in enumerate(names)}
    keys = [_key(n) for n in names]
    depth = [0] * len(names)
    for i, par in enumerate(parents):
        depth[i] = depth[par] + 1 if par >= 0 else 0

    def above(i):  # the ancestors of joint i, nearest first
        return [parents[i]] + above(parents[i]) if parents[i] >= 0 else []

    def shallowest(joints):
        return min(joints, key=lambda i: depth[i]) if joints else None
    found = {}
    for joint, name in (joint_map or {}).items():
        if joint not in JOINTS or name not in idx:
            raise InputError(f"{path}: --joint-map {joint}={name}: expected an H36M-17 joint ({' '.join(JOINTS)}) "
                             f"= a joint of this file ({', '.join(names)})")
        found[JOINTS.index(joint)] = idx[name]
    cmu = all(n in idx for n in CMU_TO_H36M)
    if cmu:
        found = {**{k: idx[n] for n, k in CMU_TO_H36M.items()}, **found}
    limbs = [(i, _limb(key)) for i, key in enumerate(keys)]
    for k, joint in enumerate(JOINTS):
        side, _, role = joint.partition("_")
        if side in SIDES and role in PARTS and k not in found:
            ranked = [(hit[2], depth[i], i) for i, hit in limbs if hit and hit[:2] == (side, role)]
            if ranked:
                found[k] = min(ranked)[2]
    if 0 not in found:  # the pelvis: Hips / Pelvis, else the root
        found[0] = shallowest([i for i, key in enumerate(keys) if key.endswith(("hips", "pelvis")) or key == "hip"]) or 0
    if 9 not in found:
        head = shallowest([i for i, key in enumerate(keys) if key.endswith("head")])
        if head is not None:
            found[9] = head
    if 9 in found and 8 not in found:  # the thorax: the lowest Neck below the head, not at its parent's place
        necks = [i for i in above(found[9]) if "neck" in keys[i]]
        moved = [i for i in necks if np.abs(offsets[i]).max() > 0]
        if necks:
            found[8] = (moved or necks)[-1]
    if 9 in found and 10 not in found:  # the head top: HeadTop / HeadNub / Head_end, or the head's end site
        tops = [i for i in range(len(names)) if found[9] in above(i)
                and any(t in keys[i] for t in ("headtop", "headnub", "headend"))]
        ends = [i for i, par in enumerate(parents) if par == found[9] and names[i].endswith("_end")]
        if tops or ends:
            found[10] = shallowest(tops or ends)
    missing = [JOINTS[k] for k in range(NJ) if k != 7 and k not in found]
    if missing:
        raise InputError(f"{path}: skeleton lacks joints for {' '.join(missing)} (CMU's names: "
                         f"{', '.join(n for n, k in CMU_TO_H36M.items() if JOINTS[k] in missing)}; other skeletons "
                         f"are read by side + part, e.g. LeftUpLeg, L_Knee, Bip01 R Calf, mixamorig:LeftHand; or "
                         f"--joint-map JOINT=NAME); the file's joints: {', '.join(names)}")
    for a, b in [(1, 2), (2, 3), (4, 5), (5, 6), (11, 12), (12, 13), (14, 15), (15, 16), (0, 8), (8, 9), (9, 10)]:
        if found[a] not in above(found[b]):
            raise InputError(f"{path}: {JOINTS[b]} = {names[found[b]]} does not hang below {JOINTS[a]} = "
                             f"{names[found[a]]}; name the right joints with --joint-map JOINT=NAME")
    recipes = [(found.get(k, 0), found.get(k, 0), 0.0) for k in range(NJ)]
    if 7 in found:
        spine = names[found[7]]
    else:  # halfway along the chain pelvis -> thorax (rest lengths): Human3.6M's spine sits about there
        up = [found[8]] + above(found[8])
        up = up[:up.index(found[0]) + 1][::-1]                                    # pelvis ... thorax
        run = np.cumsum([0.0] + [np.linalg.norm(offsets[i]) for i in up[1:]])    # arc length
        s = min(int(np.searchsorted(run, run[-1] / 2, side="right")) - 1, len(up) - 2)
        w = float(np.clip((run[-1] / 2 - run[s]) / max(run[s + 1] - run[s], 1e-12), 0, 1))
        recipes[7] = (up[s], up[s + 1], w)
        spine = f"{w:.2f} of {names[up[s]]}->{names[up[s + 1]]}"
    how = "CMU (cgspeed) names" if cmu else "by name"
    return recipes, f"{how}: " + " ".join(f"{JOINTS[k]}={names[found[k]]}" for k in range(NJ) if k != 7) + \
        f" spine={spine}"


def bvh_to_h36m(path, stride=1, unit_m=CMU_UNIT_M, up="y", joint_map=None, seen=None):
    """BVH file -> (F, 17, 3) world positions in metres (Y up), H36M-17 order. `seen`: a set of the
    skeleton mappings already printed (each new one is printed once)."""
    names, parents, offsets, channels, motion = read_bvh(path)
    recipes, how = skeleton_map(names, parents, offsets, path, joint_map)
    if seen is not None and how not in seen:
        seen.add(how)
        print(f"{path}: H36M-17 joints {how}")
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
            elif c.endswith("position"):  # the joint's local position on this axis, in place of its OFFSET
                axis = np.eye(3)["XYZ".index(c[0].upper())]
                local_t = local_t * (1 - axis) + axis * motion[:, col:col + 1]
            col += 1
        if par < 0:
            rot[j], pos[j] = local_r, np.broadcast_to(local_t, (F_, 3))
        else:  # p_j = p_parent + R_parent offset_j;  R_j = R_parent R_local
            pos[j] = pos[par] + np.einsum("fij,fj->fi", rot[par], np.broadcast_to(local_t, (F_, 3)))
            rot[j] = rot[par] @ local_r
    out = np.stack([(1 - w) * pos[i] + w * pos[j] for i, j, w in recipes], 1)      # (F, 17, 3)
    out = out[..., [0, 2, 1]] * [1, 1, -1] if up == "z" else out       # Z-up -> Y-up: (x, z, -y), a rotation
    out = out * unit_m
    chain = [3, 2, 1, 0, 7, 8, 9, 10]  # right ankle, knee, hip, pelvis, spine, thorax, neck/nose, head top
    stature = np.median(np.linalg.norm(np.diff(out[:, chain], axis=1), axis=-1).sum(1))  # any pose: ~ height
    if not 0.5 <= stature <= 3.0:  # catches centimetres, inches or metres read at another unit
        raise InputError(f"{path}: the skeleton's ankle-to-head bones sum to {stature:.3g} m at --unit-m {unit_m:g}; "
                         f"expected a person's 0.5-3 m (--unit-m: 0.01 centimetres, 0.0254 inches, 1 metres, "
                         f"0.0564 CMU's)")
    if (out[:, 10, 1] - out[:, [3, 6], 1].mean(1)).max() < 0.5 * stature:  # never upright along +Y
        print(f"note: {path}: the head is never above the feet along Y; a Z-up export? (--up z)")
    return out.astype(np.float32)


def bvh_files(paths):
    """.bvh files and folders of them -> the sorted list of files."""
    files = []
    for p in paths:
        found = sorted(f for f in glob.glob(os.path.join(p, "*")) if f.lower().endswith(".bvh")) \
            if os.path.isdir(p) else [p]
        if not found:
            raise InputError(f"{p}: no .bvh files in this folder (expected BVH mocap files)")
        files += found
    return files


def convert(paths, out, stride=4, source=None, unit_m=CMU_UNIT_M, up="y", joint_map=()):
    """BVH files/folders -> the memory npz `out` (poses_3d, clip[, source]); returns poses_3d.
    joint_map: 'JOINT=NAME' strings (an H36M-17 joint = a BVH joint), for skeletons the names do not tell."""
    pairs = [m.partition("=") for m in joint_map]
    if any(not j or not eq or not n for j, eq, n in pairs):
        raise InputError(f"--joint-map {' '.join(joint_map)}: expected JOINT=NAME pairs, e.g. head=Head_end")
    joint_map = {j: n for j, _, n in pairs}
    if stride < 1:
        raise InputError(f"--stride {stride}: expected an integer >= 1")
    if not unit_m > 0:
        raise InputError(f"--unit-m {unit_m}: expected metres per BVH unit, > 0")
    poses, clips, seen = [], [], set()
    for f in bvh_files(paths):
        world = bvh_to_h36m(f, stride=stride, unit_m=unit_m, up=up, joint_map=joint_map, seen=seen)
        poses.append(world)
        clips += [os.path.splitext(os.path.basename(f))[0]] * len(world)
        print(f"{f}: {len(world)} poses, median height {np.median(np.ptp(world[:, :, 1], 1)):.2f} m")
    extra = {} if source is None else {"source": np.array(source)}
    np.savez_compressed(out, poses_3d=np.concatenate(poses).astype(np.float32), clip=np.array(clips), **extra)
    return np.concatenate(poses)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bvh", nargs="+", help="BVH files and/or folders of .bvh files")
    p.add_argument("--out", required=True, help="memory npz to write")
    p.add_argument("--stride", type=int, default=4, help="keep every Nth frame: 120 fps -> 30 fps (default: 4)")
    p.add_argument("--source", default=None, help="a 'source' note stored in the npz (default: none)")
    p.add_argument("--unit-m", type=float, default=CMU_UNIT_M, help="metres per BVH unit (default: 0.0564, CMU's; "
                   "0.01 centimetres, 0.0254 inches, 1 metres)")
    p.add_argument("--up", choices=["y", "z"], default="y", help="the BVH's up axis (default: y)")
    p.add_argument("--joint-map", nargs="+", default=(), metavar="JOINT=NAME", help="H36M-17 joints (pelvis r_hip "
                   "... r_wrist, as pose_aign.py's JOINTS) the joint names do not tell, e.g. head=Head_end "
                   "(a joint's end site is <joint>_end) (default: found by name)")
    a = p.parse_args()
    common.run_main(lambda: print(f"wrote {a.out}: "
                                  f"{len(convert(a.bvh, a.out, a.stride, a.source, a.unit_m, a.up, a.joint_map))} poses"))
