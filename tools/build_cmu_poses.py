"""Rebuild data/cmu_h36m17.npz: real CMU mocap poses on the H36M-17 skeleton, read by pose_aign's
own BVH reader from the CMU BVH clips (subject 01, trials 01 and 03; cgspeed BVH conversion).

    python3 tools/build_cmu_poses.py --bvh-dir ../shared/data/cmu

Licence of the source: CMU Graphics Lab Motion Capture Database, free for research and commercial
use ("The data used in this project was obtained from mocap.cs.cmu.edu. The database was created
with funding from NSF EIA-0196217."); BVH conversion by B. Hahne (cgspeed), no added restrictions.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pose_aign  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--bvh-dir", default=os.path.join("..", "shared", "data", "cmu"))
p.add_argument("--stride", type=int, default=4, help="keep every Nth frame: 120 fps -> 30 fps (default: 4)")
p.add_argument("--out", default=os.path.join("data", "cmu_h36m17.npz"))
args = p.parse_args()

poses, clips = [], []
for clip in ["01_01", "01_03"]:
    world = pose_aign.bvh_to_h36m(os.path.join(args.bvh_dir, f"{clip}.bvh"), stride=args.stride)
    poses.append(world); clips += [clip] * len(world)
    print(f"{clip}: {len(world)} poses, median height {np.median(np.ptp(world[:, :, 1], 1)):.2f} m")
np.savez_compressed(args.out, poses_3d=np.concatenate(poses).astype(np.float32), clip=np.array(clips),
                    source=np.array("CMU mocap subject 01 trials 01, 03 (mocap.cs.cmu.edu; NSF EIA-0196217)"))
print(f"wrote {args.out}")
