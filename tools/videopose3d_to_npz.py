"""VideoPose3D's in-the-wild 2D -> a pose_aign.py npz: your own videos' keypoints, to lift or to train on.

VideoPose3D (Pavllo et al., CVPR 2019) gets 2D keypoints from videos with Detectron2
(inference/infer_video_d2.py) and packs them with data/prepare_data_2d_custom.py into
data_2d_custom_<name>.npz: positions_2d = {video: {'custom': [(N,17,2) COCO-17 pixels]}} and metadata =
{'layout_name': 'coco', ..., 'video_metadata': {video: {'w': W, 'h': H}}}, both pickled (read here by
pose_aign.py's restricted unpickler: no code runs). This writes the generic npz of pose_aign.py:
poses_2d (N,17,2) in COCO order with layout 'coco' (mapped to H36M-17 on loading), a camera per frame
(focal --focal px, default max(W, H), a ~53 deg field of view on the long side; principal point the image
centre: the videos' intrinsics are unknown), subject = action = the video's name and frame = its index.

    python3 tools/videopose3d_to_npz.py data_2d_custom_myvideos.npz --out myvideos.npz
    python3 pose_aign.py --predict myvideos.npz --resume runs/X/ckpt.pt   # 3D per frame, in file order
    python3 pose_aign.py --data myvideos.npz --memory mem.npz             # AIGN on them (no 3D: no metrics)
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import pose_aign as P  # noqa: E402
from common import InputError  # noqa: E402

LAYOUT = ("VideoPose3D's data_2d_custom_*.npz: positions_2d {video: {'custom': [(N,17,2) COCO-17 pixels]}}, "
          "metadata {'layout_name': 'coco', 'video_metadata': {video: {'w', 'h'}}}")


def convert(path, out, focal=None):
    """The custom npz `path` -> the generic npz `out`; returns (frames, videos)."""
    pos = P.load_pickled_dict(path, "positions_2d")
    meta = common.read_pickled(path, "metadata", f"'metadata' ({LAYOUT})")
    sizes = meta.get("video_metadata") if isinstance(meta, dict) else None
    if not isinstance(sizes, dict) or str(meta.get("layout_name", "coco")).lower() != "coco":
        found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"{path}: metadata {found} lacks video_metadata or is not in the coco layout; "
                         f"expected {LAYOUT}")
    kps, cams, names, frames = [], [], [], []
    for v in sorted(pos):
        views, size = pos[v].get("custom"), sizes.get(v)
        if not (isinstance(views, (list, tuple)) and len(views) == 1 and isinstance(size, dict)
                and {"w", "h"} <= set(size)):
            raise InputError(f"{path}: video {v!r}: expected positions_2d[{v!r}]['custom'] = [keypoints] and "
                             f"video_metadata[{v!r}] = {{'w': W, 'h': H}} ({LAYOUT})")
        kp = common.as_numbers(views[0], path, f"{v}/custom", "(N, 17, 2) COCO-17 pixels", np.float32)  # (n,17,2)
        w, h = common.as_numbers([size["w"], size["h"]], path, f"video_metadata[{v!r}]", "w, h in pixels")
        if kp.ndim != 3 or kp.shape[1:] != (P.NJ, 2) or not (w > 0 and h > 0):
            raise InputError(f"{path}: video {v!r}: keypoints {kp.shape}, image {w:g} x {h:g}; expected "
                             f"(N, 17, 2) COCO-17 pixels and a positive width and height ({LAYOUT})")
        f = focal or max(w, h)
        kps.append(kp)
        cams.append(np.tile(np.float32([f, f, w / 2, h / 2]), (len(kp), 1)))   # (n,4) fx fy cx cy
        names += [v] * len(kp)
        frames.append(np.arange(len(kp)))
    if not kps:
        raise InputError(f"{path}: positions_2d holds no videos; expected {LAYOUT}")
    kp, cam = np.concatenate(kps), np.concatenate(cams)                            # (N,17,2), (N,4)
    P.make_split(path, P.to_h36m(kp, "coco"), cam, what=LAYOUT)                    # what the script checks
    np.savez_compressed(out, poses_2d=kp, camera=cam, layout=np.array("coco"), subject=np.array(names),
                        action=np.array(names), frame=np.concatenate(frames))
    return len(kp), len(kps)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("custom", help="VideoPose3D's data_2d_custom_<name>.npz")
    p.add_argument("--out", required=True, help="generic pose_aign.py npz to write")
    p.add_argument("--focal", type=float, default=None, help="focal length in pixels, if your camera's is "
                   "known (default: max(width, height) of each video)")
    a = p.parse_args()
    if a.focal is not None and not a.focal > 0:
        p.error(f"--focal {a.focal:g}: expected a positive focal length in pixels")
    common.run_main(lambda: print("wrote {}: {} frames of {} video(s)".format(a.out, *convert(a.custom, a.out,
                                                                                             a.focal))))
