"""2D keypoints of your own video from OpenPose or a COCO-format detector -> a pose_aign.py npz.

Two detector outputs are read (no code runs: JSON only):
  * a folder of OpenPose --write_json files (one per frame, `people[i].pose_keypoints_2d` = x0 y0 c0 x1 ...),
    BODY_25 or COCO-18 models, told apart by their number of keypoints;
  * a COCO keypoint-results JSON (a list of {"image_id", "keypoints": 17 x (x, y, c), "score"}), as written by
    Detectron2's COCOEvaluator, AlphaPose (its default COCO-17 model) or MMPose.
Each frame keeps its most confident person (OpenPose: the largest sum of joint confidences; COCO: 'score'); a
frame without one is skipped (the npz's 'frame' names the frames kept). Joints are put in COCO-17 order with
their confidence (0 = missing; --min-confidence drops weaker ones) and layout 'coco', mapped to H36M-17 when
pose_aign.py loads them. The camera is unknown: f = --focal px (default max(W, H), a ~53 deg field of view on
the long side) at the centre of --image-size W H, which these files do not record. Coordinates must be
pixels of that image (OpenPose's default --keypoint_scale 0).

    python3 tools/keypoints_to_npz.py openpose_json/ --image-size 1920 1080 --out mine.npz
    python3 tools/keypoints_to_npz.py alphapose-results.json --image-size 1280 720 --out mine.npz
    python3 pose_aign.py --predict mine.npz --resume runs/X/ckpt.pt   # 3D per kept frame, in frame order
"""
import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import pose_aign as P  # noqa: E402
from common import InputError  # noqa: E402

# the COCO-17 joints (nose, l/r eye, l/r ear, l/r shoulder, elbow, wrist, hip, knee, ankle) in each layout
TO_COCO = {25: [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11],   # OpenPose BODY_25
           18: [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10],   # OpenPose COCO-18
           17: list(range(17))}                                               # COCO-17
OPENPOSE = "OpenPose --write_json files: {'people': [{'pose_keypoints_2d': [x0, y0, c0, ...]}]}, BODY_25 or COCO-18"
COCO = "a COCO keypoint-results list: [{'image_id': ..., 'keypoints': [x0, y0, c0, ...] (17 joints), 'score': s}]"


def as_joints(flat, where, what):
    """A flat x y c list -> (J,3) in COCO-17 order."""
    a = common.as_numbers(flat, where, "the keypoints", what)
    if a.ndim != 1 or len(a) % 3 or len(a) // 3 not in TO_COCO or not np.isfinite(a).all():
        raise InputError(f"{where}: keypoints of length {a.size}; expected finite x y c triples of 25, 18 or 17 "
                         f"joints ({what})")
    return a.reshape(-1, 3)[TO_COCO[len(a) // 3]]


def read_openpose(folder):
    """A folder of OpenPose JSONs -> [(frame name, (17,3) or None)] in frame order."""
    files = sorted(glob.glob(os.path.join(folder, "*.json")), key=common.natural_key)
    if not files:
        raise InputError(f"{folder}: no *.json files; expected {OPENPOSE}")
    frames = []
    for f in files:
        people = common.read_json(f, OPENPOSE)
        people = people.get("people") if isinstance(people, dict) else None
        if not isinstance(people, list) or not all(isinstance(p, dict) and "pose_keypoints_2d" in p for p in people):
            raise InputError(f"{f}: expected {OPENPOSE}")
        joints = [as_joints(p["pose_keypoints_2d"], f, OPENPOSE) for p in people if p["pose_keypoints_2d"]]
        frames.append((os.path.basename(f).replace("_keypoints.json", "").replace(".json", ""),
                       max(joints, key=lambda j: j[:, 2].sum()) if joints else None))
    return frames


def read_coco(path):
    """A COCO keypoint-results JSON -> [(image id, (17,3))] in image order, the best-scoring person each."""
    rows = common.read_json(path, COCO)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"image_id", "keypoints"} <= set(r) and
                                             isinstance(r["image_id"], (int, str)) for r in rows):
        raise InputError(f"{path}: expected {COCO}")
    best = {}
    for r in rows:
        score = common.as_numbers(r.get("score", 0.0), path, "a 'score'", COCO)
        if r.get("category_id", 1) == 1 and (r["image_id"] not in best or score > best[r["image_id"]][0]):
            best[r["image_id"]] = (score, as_joints(r["keypoints"], path, COCO))
    return [(str(k), best[k][1]) for k in sorted(best, key=common.natural_key)]


def convert(src, out, image_size, focal=None, min_confidence=0.0):
    """OpenPose folder or COCO results `src` -> the generic npz `out`; returns (frames kept, frames skipped)."""
    frames = read_openpose(src) if os.path.isdir(src) else read_coco(src)
    for _, j in frames:
        if j is not None:
            j[j[:, 2] <= min_confidence] = 0  # missing (OpenPose writes 0 0 0 for a joint it did not find)
    kept = [(name, j) for name, j in frames if j is not None and (j[:, 2] > 0).any()]
    if not kept:
        raise InputError(f"{src}: no frame holds a person with a joint above --min-confidence {min_confidence:g}")
    w, h = image_size
    kp = np.stack([j for _, j in kept]).astype(np.float32)                          # (N,17,3) COCO-17
    cam = np.tile(np.float32([focal or max(w, h), focal or max(w, h), w / 2, h / 2]), (len(kp), 1))  # (N,4)
    what = f"{src}: keypoints in pixels of a {w:g} x {h:g} image (--image-size)"
    P.make_split(src, P.to_h36m(kp, "coco"), cam, what=what)                        # what the script checks
    clip = np.array([os.path.splitext(os.path.basename(os.path.normpath(src)))[0]] * len(kp))
    np.savez_compressed(out, poses_2d=kp, camera=cam, layout=np.array("coco"), subject=clip, action=clip,
                        frame=np.array([name for name, _ in kept]))
    return len(kept), len(frames) - len(kept)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="a folder of OpenPose JSON files, or a COCO keypoint-results JSON")
    p.add_argument("--image-size", type=float, nargs=2, required=True, metavar=("W", "H"),
                   help="the video's width and height in pixels (the files do not record it)")
    p.add_argument("--out", required=True, help="generic pose_aign.py npz to write")
    p.add_argument("--focal", type=float, default=None, help="focal length in pixels, if your camera's is "
                   "known (default: max(W, H))")
    p.add_argument("--min-confidence", type=float, default=0.0, help="joints at or below this confidence are "
                   "missing (default: 0, only those the detector did not find)")
    a = p.parse_args()
    if not (min(a.image_size) > 0 and (a.focal is None or a.focal > 0)):
        p.error(f"--image-size {a.image_size} --focal {a.focal}: expected positive pixels")
    common.run_main(lambda: print("wrote {}: {} frames ({} without a person skipped)".format(
        a.out, *convert(a.src, a.out, a.image_size, a.focal, a.min_confidence))))
