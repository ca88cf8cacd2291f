"""AIGN face super-resolution and inpainting from unpaired faces, with (biased) memories.

Tung, Harley, Seto, Fragkiadaki, ICCV 2017, experiment 3. G maps a low-resolution face (--task sr) or
a face with the mouth/nose hidden (--task inpaint) to a face; P = k x k average pooling, or the mask:
    L_G = lambda_rec ||P(G(x)) - x||^2 + lambda_adv adv(D(G(x))) [+ lambda_sup ||G(x) - y||^2 on paired x]
(y the true face; inpainting: D sees the composite m x + (1 - m) G(x), the two squared terms G's raw output)
D tells G(x) from a memory of faces; opposite memories on the same inputs should give opposite faces, judged
by ONNX models (mouth: a rule on the mouth box) and a CNN that G never sees. Results card (built-in 64x64
DCGAN faces, 500 balanced test faces, 1 CPU thread; tools/face_bench.py; docs/face.md):
    memory A - B, judged points (onnx / cnn): female vs male +21.7 / +14.8, old vs young +6.8 / +9.9 (sr x4,
    400 steps, seeds 0-2, LR PSNR 35.2-39.6 dB); open vs closed mouth +39.9 / +45.7 (inpaint, 800 steps, G
    averaged over ~10 steps, seeds 0-2, weakest seed +22.8 / +32.4). The CNN judges' A - B on true faces: +31
    gender, +12 age, +62 mouth. Chosen on validation faces. Default run, 1 thread: sr ~2.5, inpaint ~7 min."""
import collections
import copy
import glob
import importlib.util
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import common
from common import InputError

SCRIPT, NETS = "face_aign", ("G", "D", "G_ema")
# fixed by a checkpoint (--resume, --eval-only, --predict): the networks and the memory
ARCH = ("task", "size", "scale", "region", "channels", "d_channels", "d_norm", "d_pool", "d_region", "blocks",
        "gan", "bias", "memory", "paired_frac")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Boxes hidden by the inpainting mask, as fractions (y0, y1, x0, x1) of an aligned square face
# crop; they cover the mouth/nose of both CelebA center crops and the built-in DCGAN faces.
BOXES = {"mouth": (0.66, 0.90, 0.30, 0.70), "nose": (0.46, 0.70, 0.38, 0.62)}


# ----------------------------------------------------------------------------------------------
# Args
def get_args(argv=None):
    p = common.ArgumentParser(description=__doc__.split("\n")[0], epilog=(
        "--data layouts (details: README): CelebA DIR/list_attr_celeba.txt [, list_eval_partition.txt] and "
        "img_align_celeba/*.jpg (also the official Anno/ Eval/ Img/ download, its img_align_celeba_png/, Kaggle's "
        "copy: .csv lists, nested images); or a plain folder of face images (no attributes: no --bias, no CNN "
        "judge). --memory: a folder of face images."))
    common.add_common_args(p, steps="400 sr, 800 inpaint", batch_size=32, lr=2e-4, eval_every=200)
    add = p.add_argument
    add("--task", choices=["sr", "inpaint"], default="sr", help="sr or inpaint (default: sr)")
    add("--size", type=int, default=64, help="high-res face size, a power of 2 >= 32 (tested: 32/64/128) "
        "(default: 64)")
    add("--scale", type=int, default=4, help="sr downsampling factor, 2/4/8 (default: 4)")
    add("--region", choices=sorted(BOXES), default="mouth", help="inpaint: the hidden box; also where "
        "--d-region hole/both crops (default: mouth)")
    add("--jitter", type=float, default=0.03, help="inpaint: max box shift / --size (default: 0.03)")
    add("--bias", default=None, help="memory = faces with this attribute, e.g. -Male (default: all faces)")
    add("--memory", default=None, help="folder of memory faces (default: half of --data's training faces)")
    add("--paired-frac", type=float, default=0.0, help="fraction of G's inputs with truth used (default: 0)")
    add("--lambda-sup", type=float, default=1.0, help="paired supervision weight (default: 1.0)")
    add("--lambda-rec", type=float, default=1.0, help="renderer reconstruction weight (default: 1.0)")
    add("--lambda-adv", type=float, default=0.2, help="adversarial weight (default: 0.2, chosen on the "
        "validation faces; the paper: 0.01 sr, 0.001 inpaint)")
    add("--gan", choices=["bce", "lsgan", "wgan-gp"], default="bce", help="adversarial loss (default: bce)")
    add("--channels", type=int, default=32, help="G's channels (default: 32)")
    add("--d-channels", type=int, default=None, help="D's first channels (default: --channels/2)")
    add("--d-norm", choices=["none", "spectral"], default="none", help="D's weight norm (default: none)")
    add("--d-pool", type=int, default=None, choices=[1, 2, 4], help="D sees the faces k x k average-pooled "
        "(default: 2 sr, chosen on the validation faces; 1 inpaint)")
    add("--d-region", choices=["face", "hole", "both"], default=None, help="D sees the whole face, the S/2 "
        "square around the --region box (both --d-pool'ed), or both (default: both inpaint, face sr)")
    add("--lr-d", "--d-lr", dest="d_lr", type=float, default=None, help="D's learning rate (default: 1e-3 sr, chosen on the "
        "validation faces; --lr inpaint)")
    add("--ema", type=float, default=None, help="decay of G's evaluated weight mean, 0 = G itself (default: "
        "0.99 sr, 0.9 inpaint, chosen on the validation faces)")
    add("--blocks", type=int, default=4, help="residual blocks in G (default: 4; paper 15)")
    add("--test-size", type=int, default=500, help="test and validation faces each, balanced on --judge-attr "
        "(default: 500)")
    add("--max-images", type=int, default=0, help="read at most N faces of --data (default: 0 = all)")
    add("--judge", choices=["auto", "onnx", "cnn", "both", "none"], default="auto", help="attribute judges: "
        "onnx (age/gender models + mouth rule), a CNN trained once on held-out labelled faces, both, none "
        "(default: auto = both on the built-in faces, cnn on labelled --data; each where its tools/ file is)")
    add("--judge-attr", default=None, help="attribute to judge (default: --bias, else -Male)")
    add("--judge-steps", type=int, default=1000, help="training steps of the CNN judge (default: 1000)")
    args = p.parse_args(glue_negated(sys.argv[1:] if argv is None else argv, ("--bias", "--judge-attr")))
    sr = args.task == "sr"  # the per-task defaults below were chosen on the validation faces (docs/face.md)
    args.steps = args.steps if args.steps is not None else 400 if sr else 800
    args.d_pool, args.d_region = args.d_pool or (2 if sr else 1), args.d_region or ("face" if sr else "both")
    args.d_lr = args.d_lr if args.d_lr is not None else 1e-3 if sr else args.lr
    args.ema = args.ema if args.ema is not None else 0.99 if sr else 0.9
    args.judge_attr = args.judge_attr or args.bias or "-Male"
    args.d_channels = args.d_channels if args.d_channels is not None else max(1, args.channels // 2)
    common.check_args(args, ("max_images", "blocks", "judge_steps"), ("d_channels", "test_size"))
    for bad, msg in ((args.size < 32 or args.size & args.size - 1, f"--size {args.size}: expected 2^k >= 32"),
                     (args.task == "sr" and (args.scale not in (2, 4, 8) or args.size // args.scale < 4),
                      f"--scale {args.scale}: expected 2, 4 or 8 with --size/--scale >= 4"),
                     (args.channels < 2, f"--channels {args.channels}: expected an integer >= 2"),
                     (not 0 <= args.jitter <= 0.2, f"--jitter {args.jitter}: expected 0 to 0.2"),
                     (not 0 <= args.ema < 1, f"--ema {args.ema}: expected 0 <= decay < 1"),
                     (not (math.isfinite(args.d_lr) and args.d_lr > 0),
                      f"--lr-d {args.d_lr}: expected a finite number > 0"),
                     (args.bias and args.memory, "--bias and --memory: expected one of them")):
        if bad:
            raise InputError(msg)
    if args.task == "inpaint" and args.d_region != "face":  # D's hole crop must hold the box wherever it moves
        y0, x0, side = hole_crop(args.size, args.region)
        box = [round(f * args.size) for f in BOXES[args.region]]
        room = min(box[0] - y0, y0 + side - box[1], box[2] - x0, x0 + side - box[3])
        if round(args.jitter * args.size) > room:
            raise InputError(f"--jitter {args.jitter}: shifts the {args.region} box by up to "
                             f"{round(args.jitter * args.size)} px, out of D's hole crop (room {room} px at --size "
                             f"{args.size}); expected --jitter <= {room / args.size:.3f}, or --d-region face")
    return args

def glue_negated(argv, flags):
    """`--bias -Male` reads as two flags to argparse: glue a negated attribute to its flag."""
    argv = list(argv)
    for i in range(len(argv) - 1, 0, -1):
        if argv[i - 1] in flags and argv[i][:1] == "-" and argv[i][1:2] != "-":
            argv[i - 1:i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    return argv


# ----------------------------------------------------------------------------------------------
# Data
def read_rgb(path):
    """One RGB image as uint8 (H, W, 3); anything else is a clear InputError."""
    import imageio.v3 as iio
    if not os.path.isfile(path):  # e.g. a CelebA list naming an image the folder lacks
        raise InputError(f"{path}: no such file (expected an RGB JPEG/PNG face image)")
    try:
        img = iio.imread(path)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as an image (expected an RGB JPEG/PNG; "
                         f"{type(e).__name__})") from None
    img = img[..., 0] if img.ndim == 3 and img.shape[2] in (1, 2) else img   # grey (+ alpha) -> grey
    img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]  # grey -> RGB; RGBA -> RGB
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"{path}: expected an 8-bit grey, RGB or RGBA image, found {img.dtype} {img.shape} "
                         f"(convert it to 8-bit RGB)")
    return img

def to_square(img, size):
    """(H, W, 3) uint8 -> center square crop resized to (3, size, size) uint8 (antialiased)."""
    (h, w), s = img.shape[:2], min(img.shape[:2])
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if s != size:  # PIL's bicubic filter is antialiased when shrinking (pillow comes with imageio)
        from PIL import Image
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BICUBIC))
    return torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).contiguous()  # (3, size, size)

def list_images(folder):
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: {'not a' if os.path.exists(folder) else 'no such'} folder (expected a "
                         f"folder of RGB face images)")
    files = sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(IMAGE_EXT))
    if not files:
        inside = [d for d in ("img_align_celeba", "images") if os.path.isdir(os.path.join(folder, d))]
        raise InputError(f"{folder}: no images found (expected {'/'.join(IMAGE_EXT)} face images"
                         + (f"; they may be in {os.path.join(folder, inside[0])})" if inside else ")"))
    return files

def celeba_path(root, name, *dirs):
    """root/<dir>/name for the first dir where it exists (the official download: Anno/, Eval/, Img/)."""
    paths = [os.path.join(root, d, name) for d in dirs]
    return next((p for p in paths if os.path.exists(p)), paths[0])

def load_images(files, size, what, show):
    """Image files -> (N, 3, size, size) uint8; images smaller than size are upscaled, and said so."""
    small = []  # (file, (h, w)) of those

    def read(f):
        img = read_rgb(f)
        small.extend([(f, img.shape[:2])] if min(img.shape[:2]) < size else [])
        return to_square(img, size)
    faces = torch.stack([read(f) for f in tqdm(files, desc=f"reading {what}", disable=not show, leave=False)])
    if small:  # a blurred upscale is no high-resolution target (nor memory)
        (f, (h, w)) = small[0]
        common.log(f"note: {len(small)} of {len(files)} images ({what}) are smaller than --size {size} (e.g. {f}: "
                   f"{w}x{h}); they are upscaled, so they hold less detail than {size}x{size} (a smaller --size?)")
    return faces

def read_rows(path, allowed, attrs=False):
    """A CelebA list: `filename v1 .. vn` rows with every v in `allowed`, after a count line and a line of
    n attribute names if `attrs` (else n = 1) -> (names, files, (N, n) str array), or an InputError.
    Kaggle's .csv copies: comma-separated, one header line `image_id,name1,..` instead of the two."""
    what = "a count line, a line of attribute names, `file v1 .. vA` rows" if attrs else "`file p` rows"
    csv = path.lower().endswith(".csv")
    what = f"a header line `image_id,{'names' if attrs else 'partition'}`, then comma-separated rows" if csv else what
    lines = [[v.strip() for v in ln.split(",")] if csv else ln.split()
             for ln in common.read_text(path, what).splitlines() if ln.strip()]
    if csv and lines:  # the header holds the names: as the official layout's count and names lines
        lines = [[str(len(lines) - 1)], lines[0][1:], *lines[1:]] if attrs else lines[1:]
    if len(lines) < 1 + 2 * attrs:
        raise InputError(f"{path}: expected {what}")
    names, rows, n = (lines[1], lines[2:], len(lines[1])) if attrs else (None, lines, 1)
    if attrs and lines[0] != [str(len(rows))]:  # a truncated download, or a list cut down on purpose
        common.log(f"note: {path}: its count line says {' '.join(lines[0])}; reading the {len(rows)} rows")
    for i, r in enumerate(rows, 1 + 2 * attrs):
        if len(r) != n + 1 or any(v not in allowed for v in r[1:]):
            raise InputError(f"{path}:{i}: expected {what}, v in {{{', '.join(allowed)}}}; found {r[:4]}")
    files = [r[0] for r in rows]
    if dup := [f for f, k in collections.Counter(files).items() if k > 1]:  # a face in two roles (test leaks)
        raise InputError(f"{path}: {dup[0]} has two rows (expected one row per image)")
    return names, files, np.array([r[1:] for r in rows]).reshape(-1, n)

def load_data(args, dist):
    """--data, or the built-in faces (built once into $AIGN_CACHE by tools/face_builtin.py)."""
    root = args.data or common.builtin_dataset(__file__, "faces", "face_builtin", dist)
    data = load_faces(args, root, not args.no_progress and dist.main)
    common.log(f"faces: {len(data['inputs'])} generator inputs, {len(data['mem'])} memory "
               f"({args.memory or args.bias or 'all faces'}), {len(data['val'])} validation, "
               f"{len(data['test'])} test", dist)
    return data

def load_faces(args, root, show):
    """Read --data (CelebA layout or a plain folder) and --memory as uint8 (N, 3, S, S) aligned faces.
    Disjoint roles, with a fixed seed (all --seed runs share them): test (partition 2, else 10%),
    validation (partition 1, else 10% of the rest), the CNN judge's faces (a fifth of the rest, where
    labels exist), then generator inputs and memory (halves of what is left; a --memory folder: all of
    it inputs). Test and validation are balanced on the judged attribute."""
    rng, cut, attrs, partition, labelled = np.random.default_rng(0), args.max_images or None, None, None, {}
    attr_file, part_file = (celeba_path(root, f"list_{f}.txt", "", d)
                            for f, d in (("attr_celeba", "Anno"), ("eval_partition", "Eval")))
    if not os.path.isfile(attr_file) and os.path.isfile(os.path.join(root, "list_attr_celeba.csv")):  # Kaggle's
        attr_file, part_file = (os.path.join(root, f"list_{f}.csv") for f in ("attr_celeba", "eval_partition"))
    if os.path.isfile(attr_file):  # CelebA layout (also the built-in data)
        names, files, vals = read_rows(attr_file, ("1", "-1"), attrs=True)  # a count, names, `file 1 -1 ..`
        files, attrs = files[:cut], torch.from_numpy(vals[:cut] == "1")
        if os.path.isfile(part_file):  # partition 0 train, 1 validation, 2 test
            _, pf, p = read_rows(part_file, ("0", "1", "2"))
            part = dict(zip(pf, p[:, 0].astype(int)))
            if missing := [fn for fn in files if fn not in part]:
                raise InputError(f"{part_file}: no row for {len(missing)} image(s) of {attr_file}, e.g. "
                                 f"{missing[0]}; expected a `file p` row for each (0 train, 1 val, 2 test)")
            partition = np.array([part[fn] for fn in files])
        img_dir = os.path.dirname(celeba_path(root, os.path.join("img_align_celeba", files[0]), "", "Img",
                                              "img_align_celeba"))  # flat, official Img/, Kaggle's nested
        paths = [os.path.join(img_dir, fn) for fn in files]  # missing: read_rgb's error
        png = celeba_path(root, os.path.join("img_align_celeba_png", os.path.splitext(files[0])[0] + ".png"), "", "Img")
        if not os.path.isfile(paths[0]) and os.path.isfile(png):  # the official lossless PNG set, named as .png
            paths = [os.path.join(os.path.dirname(png), os.path.splitext(fn)[0] + ".png") for fn in files]
        if missing := [p for p in paths if not os.path.isfile(p)]:  # a cut-down folder, or another list
            raise InputError(f"{missing[0]}: no such file, named in {attr_file} ({len(missing)} of {len(paths)} "
                             f"missing); expected every listed image in {os.path.dirname(missing[0])}")
        judged = args.judge in ("cnn", "both") or args.judge_attr != "-Male" or "Male" in names
        for attr in [a for a in (args.judge_attr if judged else None, args.bias) if a]:  # 'Male' or '-Male'
            if attr.lstrip("-") not in names:
                raise InputError(f"attribute {attr!r}: not in {attr_file} (expected one of "
                                 f"{', '.join(names)}, optionally prefixed by '-')")
            labelled[attr] = (attrs[:, names.index(attr.lstrip("-"))] != attr.startswith("-")).numpy()  # (N,)
    elif args.bias or args.judge in ("cnn", "both"):
        flag = f"--bias {args.bias}" if args.bias else f"--judge {args.judge}"
        raise InputError(f"{flag}: no list_attr_celeba.txt in {root} or {os.path.join(root, 'Anno')} (nor Kaggle's "
                         f".csv): expected labelled CelebA; a plain folder of faces has no labels")
    else:
        paths = list_images(root)[:cut]
    judged = labelled.get(args.judge_attr)  # for the balanced test/validation sets and the CNN judge
    hr = load_images(paths, args.size, "faces", show)  # (N, 3, S, S) uint8
    if partition is None or not ((partition == 2).any() and (partition != 2).any()):
        partition = np.zeros(len(hr), int)
        partition[rng.permutation(len(hr))[:max(1, len(hr) // 10)]] = 2
    test, rest = np.flatnonzero(partition == 2), np.flatnonzero(partition != 2)
    val, train = np.flatnonzero(partition == 1), rng.permutation(np.flatnonzero(partition == 0))
    if len(val) == 0 or len(train) == 0:  # no validation partition: 10% of the training faces
        rest = rng.permutation(rest)
        val, train = rest[:max(1, len(rest) // 10)], rest[max(1, len(rest) // 10):]
    n_judge = len(train) // 5 if judged is not None else 0
    if n_judge == 0 and args.judge in ("cnn", "both"):
        raise InputError(f"--judge {args.judge}: {root}: {len(hr)} faces leave {len(train)} training faces, "
                         f"none held out for the CNN judge (expected >= 5; or --judge none)")
    judge_faces, train = train[:n_judge], train[n_judge:]
    if args.memory:  # a folder memory: every remaining training face of --data is a generator input
        inputs, mem = train, load_images(list_images(args.memory), args.size, "memory", show)
    else:  # memory and generator inputs are disjoint halves of the training faces
        inputs, mem_pool = train[:len(train) // 2], train[len(train) // 2:]
        mem = hr[mem_pool[labelled[args.bias][mem_pool]] if args.bias else mem_pool]
    test, val = (balanced(ids, judged, args.test_size, rng) for ids in (test, val))
    if len(mem) < (1 if args.eval_only else args.batch_size):
        src = f"--memory {args.memory}" if args.memory else f"--bias {args.bias}" if args.bias else "--data"
        raise InputError(f"memory: {len(mem)} faces ({src}), expected at least one "
                         + ("(--eval-only)" if args.eval_only else f"batch (--batch-size {args.batch_size})")
                         + ("" if args.memory else "; it is half of the training faces" + ", those with --bias"
                            * bool(args.bias) + ": a smaller --batch-size or more faces"))
    if len(inputs) == 0:
        raise InputError(f"{root}: {len(hr)} faces leave {len(train)} training faces after the test, validation"
                         f"{' and CNN judge' if n_judge else ''} faces: none for generator inputs (expected at least "
                         f"2 training faces: one input, one memory)")

    def label(ids):  # (n,) bool labels of the judged attribute, or None
        return None if judged is None else torch.from_numpy(judged[ids])
    # the first --paired-frac of the (shuffled) inputs are the paired ones: their ground truth may be used
    return dict(inputs=hr[inputs], mem=mem, test=hr[test], val=hr[val], test_labels=label(test),
                val_labels=label(val), n_paired=round(args.paired_frac * len(inputs)),
                judge_data=None if judged is None or n_judge == 0 else (hr[judge_faces], label(judge_faces)))

def balanced(ids, judged, size, rng):
    """At most `size` of the face indices ids, half with and half without the judged attribute if labelled."""
    if judged is not None:
        pos, neg = ids[judged[ids]], ids[~judged[ids]]
        k = min(len(pos), len(neg), size // 2)
        ids = rng.permutation(np.concatenate([pos[:k], neg[:k]])) if k > 0 else ids
    return ids[:size]

def to_float(u8):
    """uint8 (B, 3, H, W) -> float in [-1, 1], the generator's and discriminator's range."""
    return u8.float() / 127.5 - 1


# ----------------------------------------------------------------------------------------------
# Networks
class ResBlock(nn.Module):
    def __init__(self, c, dilation=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(c),
                                  nn.ReLU(True), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):  # (B, c, h, w) -> (B, c, h, w)
        return x + self.body(x)

class SRGenerator(nn.Module):
    """Paper-style SR net, sized for a CPU: conv + ReLU, residual trunk, conv-BN + long skip, log2(scale) x
    (2x upsampling + conv + ReLU), a conv to RGB that starts at zero, added to the bicubic upsampling."""

    def __init__(self, scale, width, blocks):
        super().__init__()
        self.scale = scale
        self.head = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(True))
        self.trunk = nn.Sequential(*[ResBlock(width) for _ in range(blocks)],
                                   nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        up, c = [], width
        for _ in range(int(math.log2(scale))):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, max(c // 2, 16), 3, padding=1),
                   nn.ReLU(True)]
            c = max(c // 2, 16)
        self.up = nn.Sequential(*up)
        self.rgb = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.rgb.weight)
        nn.init.zeros_(self.rgb.bias)

    def forward(self, x):  # x (B, 3, h, w) in [-1, 1] -> (B, 3, h*k, w*k)
        f = self.head(x)  # (B, width, h, w)
        f = f + self.trunk(f)
        return bicubic(x, self.scale) + self.rgb(self.up(f))

class InpaintGenerator(nn.Module):
    """Encoder (to S/4) + dilated residual blocks + decoder. Input: masked face and mask (4 channels);
    the output fills only the hole: y = m * x + (1 - m) * G(x)."""

    def __init__(self, w, blocks):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, w // 2, 5, padding=2), nn.ReLU(True),
            nn.Conv2d(w // 2, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(True),  # S/2
            nn.Conv2d(w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(True),  # S/4
            *[ResBlock(w, dilation=2) for _ in range(blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w),
            nn.ReLU(True),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w // 2, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(w // 2, 3, 3, padding=1), nn.Tanh())

    def forward(self, x, m):  # x (B, 3, S, S) masked face, m (B, 1, S, S) -> raw fill (B, 3, S, S)
        return self.net(torch.cat([x, m], 1))

class Discriminator(nn.Module):
    """Strided 5x5 convs (LeakyReLU 0.2) down to 4x4, then a linear logit. No BatchNorm (the paper's D has
    it): real and fake share one forward pass, and wgan-gp needs per-sample D. --d-norm spectral: every layer
    spectrally normalised (Miyato et al. 2018). --d-pool k: D sees the face k x k average-pooled, i.e. at the
    judges' resolution, not pixel texture. crop (y0, x0, side): D sees only that square of the face."""

    def __init__(self, size, width, norm="none", pool=1, crop=None):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if norm == "spectral" else (lambda m: m)  # noqa: E731
        layers, c_in, c, self.pool = [], 3, width, pool
        self.crop = crop and (slice(crop[0], crop[0] + crop[2]), slice(crop[1], crop[1] + crop[2]))
        for _ in range(int(math.log2((crop[2] if crop else size) // pool // 4))):
            layers += [sn(nn.Conv2d(c_in, c, 5, 2, 2)), nn.LeakyReLU(0.2, True)]
            c_in, c = c, min(c * 2, 256)
        self.conv = nn.Sequential(*layers)
        self.fc = sn(nn.Linear(c_in * 16, 1))

    def forward(self, y):  # (B, 3, S, S) -> (B,) logits
        y = y[:, :, self.crop[0], self.crop[1]] if self.crop else y  # (B, 3, s, s): only the crop
        y = F.avg_pool2d(y, self.pool) if self.pool > 1 else y  # (B, 3, S/pool, S/pool)
        return self.fc(self.conv(y).flatten(1))[:, 0]

class GlobalLocalD(nn.ModuleList):
    """--d-region both: face + hole logits = one linear layer on both feature sets (Iizuka et al. 2017)."""

    def forward(self, y):  # (B, 3, S, S) -> (B,) logits
        return sum(d(y) for d in self)

def hole_crop(size, region):
    """(y0, x0, side): the S/2 square of the face around the hidden box (get_args checks that it holds the
    box shifted by --jitter)."""
    y0, y1, x0, x1 = BOXES[region]
    y, x = (min(max(round((a + b) / 2 * size - size / 4), 0), size // 2) for a, b in ((y0, y1), (x0, x1)))
    return y, x, size // 2

def build_nets(args, device):
    """{"G", "D", "G_ema"}; G has BatchNorm, D has none; G_ema (evaluated and predicted with) averages G."""
    G = (SRGenerator(args.scale, args.channels, args.blocks) if args.task == "sr"
         else InpaintGenerator(args.channels, args.blocks)).to(device)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    crop = hole_crop(args.size, args.region) if args.d_region != "face" else None
    D = Discriminator(args.size, args.d_channels, args.d_norm, args.d_pool, crop)
    if args.d_region == "both":
        D = GlobalLocalD([Discriminator(args.size, args.d_channels, args.d_norm, args.d_pool), D])
    return {"G": G, "D": D.to(device), "G_ema": G_ema}

@torch.no_grad()
def ema_update(G_ema, G, decay):
    """G_ema <- decay G_ema + (1 - decay) G (weights); BatchNorm statistics copied from G."""
    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1 - decay)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


# ----------------------------------------------------------------------------------------------
# Renderer
# The renderers P are fixed, differentiable and parameter-free; the generator input is x = P(y).
def render_sr(y, scale):
    """Downsampling renderer: k x k average pooling, stride k. (B, 3, H, W) -> (B, 3, H/k, W/k)."""
    return F.avg_pool2d(y, scale)

def render_inpaint(y, mask):
    """Masking renderer: keep the visible pixels. y (B, 3, S, S), mask (B, 1, S, S) in {0, 1}."""
    return y * mask

def box_masks(n, size, region, shifts):
    """(n, 1, S, S) masks: 1 = visible, 0 = hidden box of `region`, shifted by shifts (n, 2) pixels."""
    y0, y1, x0, x1 = (round(f * size) for f in BOXES[region])
    ys = torch.arange(size, device=shifts.device)
    dy, dx = shifts[:, :1, None], shifts[:, 1:, None]  # (n, 1, 1)
    in_y = (ys[None, :, None] >= y0 + dy) & (ys[None, :, None] < y1 + dy)  # (n, S, 1)
    in_x = (ys[None, None, :] >= x0 + dx) & (ys[None, None, :] < x1 + dx)  # (n, 1, S)
    return (~(in_y & in_x)).float()[:, None]

def make_input(args, hr, shifts):
    """Ground-truth faces (B, 3, S, S) in [-1, 1] -> (generator input x, mask or None); x = P(y)."""
    mask = None if args.task == "sr" else box_masks(len(hr), args.size, args.region, shifts)
    return (render_sr(hr, args.scale) if mask is None else render_inpaint(hr, mask)), mask

def generate(G, args, x, mask):
    """The full prediction G(x): a face (B, 3, S, S); for inpainting only the hole is filled."""
    return G(x) if args.task == "sr" else x * mask + (1 - mask) * G(x, mask)

def bicubic(x, scale):
    """Bicubic upsampling (B, 3, h, w) -> (B, 3, h*k, w*k): the SR baseline and G's starting point."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


# ----------------------------------------------------------------------------------------------
# Losses
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
    return lf.mean() - lr.mean() + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()  # lambda_GP = 10

def g_adv_loss(D, fake, gan):
    """Generator's adversarial term: make predictions look like memory samples."""
    logits = D(fake)
    if gan == "bce":  # non-saturating -log D(G(x))
        return F.softplus(-logits).mean()
    if gan == "lsgan":
        return 0.5 * ((logits - 1) ** 2).mean()
    return -logits.mean()

def rec_loss(args, raw, x, mask):
    """l_rec(P(G(x)), x). For inpainting the composite matches x on the visible pixels by
    construction, so the masking renderer is applied to G's raw output (B, 3, S, S)."""
    return F.mse_loss(render_sr(raw, args.scale) if args.task == "sr" else render_inpaint(raw, mask), x)

def sup_loss(raw, hr, paired):
    """||G(x) - y||^2 on G's raw output over the paired faces of the batch (paired: (B,) bool); 0 if there are
    none. For inpainting it also covers the visible pixels, i.e. it repeats l_rec there."""
    return F.mse_loss(raw[paired], hr[paired]) if paired.any() else raw.new_zeros(())


# ----------------------------------------------------------------------------------------------
# Evaluation and figures
def psnr(a, b):
    """Per-image PSNR (dB) of (B, C, H, W) images in [0, 1] (peak 1; RGB, unquantised, no border shave).
    Taking the peak as 1 on [-1, 1] data, as the authors did, gives 6.02 dB less."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)  # identical: 100 dB
    return 10 * torch.log10(1 / mse)

def ssim(a, b):
    """Per-image SSIM of (B, C, H, W) images in [0, 1]: 11x11 Gaussian window (sigma 1.5), valid
    region, C1 = 0.01^2, C2 = 0.03^2 (Wang et al. 2004), averaged over channels and pixels."""
    a, b = a.double(), b.double()
    g = torch.exp(-(torch.arange(11, dtype=a.dtype) - 5) ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(a.shape[1], 1, 11, 11).to(a.device)
    f = lambda t: F.conv2d(t, w, groups=a.shape[1])  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    s_aa, s_bb, s_ab = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return m.flatten(1).mean(1)

def smooth_fill(x, mask, iters=200):
    """Inpainting baseline: diffuse the hole's border colours inward (repeated 3x3 averaging)."""
    y = x + (1 - mask) * (x * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True)
    for _ in range(iters):
        y = x * mask + (1 - mask) * F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return y

def make_judges(args, data):
    """{name: judge} for --judge (auto: both on the built-in faces, cnn without onnxruntime or on labels, else
    none): the ONNX age/gender models (+ mouth rule) of tools/face_builtin.py and/or the CNN of
    tools/face_cnn_judge.py (trained once on held-out labelled faces, cached; uses no run RNG)."""
    if args.judge == "auto":
        onnx = args.data is None and importlib.util.find_spec("onnxruntime") is not None
        cnn = data["judge_data"] is not None and os.path.isfile(common.tool_file(__file__, "face_cnn_judge"))
        args.judge = "both" if onnx and cnn else "onnx" if onnx else "cnn" if cnn else "none"
    judges = {}
    if args.judge in ("onnx", "both"):
        judges["onnx"] = common.load_tool(__file__, "face_builtin", "--judge onnx needs it").OnnxJudge()
    if args.judge in ("cnn", "both"):
        tool = common.load_tool(__file__, "face_cnn_judge", "--judge cnn needs it")
        judges["cnn"] = tool.cnn_judge(*data["judge_data"], args.judge_attr, args.size, args.judge_steps)
    return judges

def u8_of(y):
    """(..., 3, H, W) in [-1, 1] -> uint8 in [0, 255]."""
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

class EvalSet:
    """Fixed inputs of the validation or test faces (inpainting boxes unshifted), the baseline's metrics and
    each judge's rate on the truth. Judged rates: attr_rate_<judge> (attr_rate: the first judge's)."""

    def __init__(self, args, faces, labels, judges, mem, device, figures):
        self.args, self.judges, self.figures = args, judges, figures
        self.base_name = "bicubic" if args.task == "sr" else "fill"
        self.hr = to_float(faces).to(device)  # (N, 3, S, S)
        self.mem = to_float(mem[:256]).to(device)  # (M <= 256, 3, S, S) memory faces for D's accuracy (capped)
        self.x, self.mask = make_input(args, self.hr, torch.zeros_like(self.hr[:, 0, 0, :2]).long())
        base = bicubic(self.x, args.scale) if args.task == "sr" else smooth_fill(self.x, self.mask)
        self.base = base.clamp(-1, 1)  # (N, 3, S, S)
        self.base_metrics = {f"{k}_{self.base_name}": v for k, v in self.metrics(self.base).items()}
        for i, (name, judge) in enumerate(judges.items()):  # rate on the ground truth; accuracy on its labels
            gt = judge.has(u8_of(self.hr).cpu(), args.judge_attr)
            keys = [f"_{name}"] + [""] * (i == 0)
            self.base_metrics.update({f"attr_rate_gt{k}": gt.float().mean().item() for k in keys})
            if labels is not None:
                acc = (gt == labels).float().mean().item()
                self.base_metrics.update({f"judge_acc{k}": acc for k in keys})

    def metrics(self, y):
        a, y = self.args, y.clamp(-1, 1)
        y01, hr01 = (y + 1) / 2, (self.hr + 1) / 2
        out = {"psnr_hr": psnr(y01, hr01).mean().item(), "ssim_hr": ssim(y01, hr01).mean().item()}
        if a.task == "sr":  # P(G(x)) vs x; inpainting's composite keeps x's visible pixels: P(y) = x by construction
            out["psnr_lr"] = psnr((render_sr(y, a.scale) + 1) / 2, (self.x + 1) / 2).mean().item()
        for i, (name, judge) in enumerate(self.judges.items()):
            rate = judge.has(u8_of(y).cpu(), a.judge_attr).float().mean().item()
            out.update({f"attr_rate_{name}": rate, **({"attr_rate": rate} if i == 0 else {})})
        return out

    @torch.no_grad()
    def evaluate(self, G, D, run_dir, step):
        """G's metrics beside the baseline's, D's accuracy on memory faces and G's outputs (+ figures)."""
        G.eval()  # BatchNorm with its running statistics
        masks = (self.x[:, :1] if self.mask is None else self.mask).split(128)  # sr: unused placeholders
        y = torch.cat([generate(G, self.args, x, m) for x, m in zip(self.x.split(128), masks)]).clamp(-1, 1)
        G.train()
        cut = 0.5 if self.args.gan == "lsgan" else 0.0  # D's threshold (wgan-gp's critic has none: d_acc rough)
        D.eval()  # spectral norm: no power iteration here (the run resumes exactly)
        acc = {"d_acc_mem": (D(self.mem) > cut).float().mean().item(),
               "d_acc_out": torch.cat([D(t) <= cut for t in y.split(256)]).float().mean().item()}
        D.train()
        if self.figures:
            self.write_figures(y, run_dir, step)
        return {**self.metrics(y), **acc, **self.base_metrics}

    def write_figures(self, y, run_dir, step):  # samples.png, samples_<step>.png, samples.npz on 8 faces
        x = self.x[:8] if self.mask is not None else F.interpolate(self.x[:8], scale_factor=self.args.scale)
        rows = [[(c[i] + 1) / 2 for c in (x, self.base, y, self.hr)] for i in range(min(8, len(y)))]
        for name in ("samples.png", f"samples_{step:06d}.png"):
            common.write_png(os.path.join(run_dir, name), common.image_grid(rows))
        np.savez(os.path.join(run_dir, "samples.npz"), **{k: np.stack([common.to_uint8(r[j]) for r in rows])
                 for j, k in enumerate(("input", "baseline", "output", "gt"))})


# ----------------------------------------------------------------------------------------------
# Training
def draw_batch(data, gen, args, dist):
    """The global batch from one generator seeded alike on all ranks; each rank keeps its slice."""
    B, W = args.batch_size, dist.world
    idx = torch.randint(len(data["inputs"]), (B * W,), generator=gen)
    midx = torch.randint(len(data["mem"]), (B * W,), generator=gen)
    j = max(0, round(args.jitter * args.size))
    shifts = torch.randint(-j, j + 1, (B * W, 2), generator=gen)  # inpaint: box jitter in pixels
    sl = slice(dist.rank * B, (dist.rank + 1) * B)
    return {"hr": to_float(data["inputs"][idx[sl]]).to(dist.device),  # (B, 3, S, S) ground truth
            "mem": to_float(data["mem"][midx[sl]]).to(dist.device),  # (B, 3, S, S) memory faces
            "shifts": shifts[sl].to(dist.device),  # (B, 2)
            "paired": (idx[sl] < data["n_paired"]).to(dist.device)}  # (B,) ground truth may be used

def train_step(nets, opts, batch, args, dist, step):
    """One D step, then one G step. G's BatchNorm statistics are per rank (no DDP buffer sync): each
    rank keeps its own running statistics, and rank 0 evaluates with its own."""
    G, D = nets["G"], nets["D"]
    x, mask = make_input(args, batch["hr"], batch["shifts"])  # generator input x = P(y_gt)
    raw = G(x) if args.task == "sr" else G(x, mask)  # (B, 3, S, S)
    y = raw if args.task == "sr" else x * mask + (1 - mask) * raw  # the prediction G(x)
    # (ii) adversarial prior, D's side: tell memory faces (real) from predictions (fake)
    loss_d = d_loss(D, batch["mem"], y.detach(), args.gan)
    common.optimiser_step(opts["D"], loss_d, dist, D)
    # (i) renderer: P(G(x)) must reproduce the input x
    loss_rec = rec_loss(args, raw, x, mask)
    # (ii) adversarial prior, G's side: predictions must look like the memory (D just updated)
    loss_adv = g_adv_loss(D, y, args.gan)
    # paired supervision where the ground truth may be used (--paired-frac)
    loss_sup = sup_loss(raw, batch["hr"], batch["paired"])
    loss_g = args.lambda_rec * loss_rec + args.lambda_adv * loss_adv + args.lambda_sup * loss_sup
    common.optimiser_step(opts["G"], loss_g, dist, G)
    ema_update(nets["G_ema"], G, args.ema)  # the evaluated generator: G averaged over ~1/(1-ema) steps
    return {"loss_d": loss_d.item(), "loss_rec": loss_rec.item(), "loss_adv": loss_adv.item(),
            "loss_sup": loss_sup.item()}

def train(args, dist, data, nets, opts, state, run_dir):
    """D and G steps for --steps in total; every --eval-every steps: checkpoint, then validate."""
    gen = torch.Generator().manual_seed(args.seed)  # draws every batch and mask jitter, alike on all ranks
    start, wall_s, samples = 0, 0.0, 0
    if state is not None:
        start, wall_s, samples = common.restore_training(state, nets, opts, gen, args.resume)
    def finish(record):  # the validation faces (val_*): settings are chosen on these, never on test faces
        m = data["valset"].evaluate(nets["G_ema"], nets["D"], run_dir, record["step"])
        record.update({f"val_{k}": v for k, v in m.items()})
        common.log(common.format_record(record))
        return record
    metrics = common.MetricsLog(run_dir, state, enabled=dist.main, finish=finish)
    stop, sums, n = common.StopRequest(), {}, 0
    t0 = time.perf_counter()
    for step in common.progress(start, args.steps, dist, args.no_progress):
        for k, v in train_step(nets, opts, draw_batch(data, gen, args, dist), args, dist, step).items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        done = step + 1
        stopping = dist.any(stop.requested)  # all ranks stop together
        if done % args.eval_every == 0 or done == args.steps or stopping:
            common.sync(dist.device)
            wall_s, samples = wall_s + time.perf_counter() - t0, samples + n * args.batch_size * dist.world
            common.stop_if_diverged(sums, done, dist, nets)  # NaN: one clear error, no bad checkpoint
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
            "images_per_s": round(samples / wall_s, 1) if wall_s > 0 else None}


# ----------------------------------------------------------------------------------------------
# Prediction
def predict(args, G, device, run_dir):
    """--predict DIR: each image (sr: a low-res face, resized to G's input by bicubic, not by P; inpaint: an
    aligned face) -> PNG of G(x)."""
    G.eval()
    mask = box_masks(1, args.size, args.region, torch.zeros(1, 2, dtype=torch.long, device=device))
    files = list_images(args.predict)
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    count = collections.Counter(stems)
    for f, stem in zip(files, stems):
        x = to_float(to_square(read_rgb(f), args.size // (args.scale if args.task == "sr" else 1))[None])
        x = x.to(device)  # (1, 3, s, s)
        with torch.no_grad():  # (1, 3, S, S)
            y = G(x) if args.task == "sr" else generate(G, args, render_inpaint(x, mask), mask)
        name = (stem if count[stem] == 1 else os.path.basename(f)) + ".png"  # a.jpg and a.png: a.jpg.png, a.png.png
        common.write_png(os.path.join(run_dir, name), u8_of(y[0]).cpu())
    common.log(f"wrote predictions of {args.predict} to {run_dir}")


# ----------------------------------------------------------------------------------------------
# Main
def main(argv=None):
    args = get_args(argv)
    dist = common.Dist(args.device)
    state = common.load_checkpoint(args.resume, SCRIPT, nets=NETS) if args.resume else None
    if state is not None:
        common.resume_args(args, state, argv, ARCH, args.resume)
        args = common.checked_args(args, get_args, args.resume)
    common.seed_everything(args.seed, args.deterministic)  # same seed on every rank: same init
    run_dir = common.make_run_dir(args, SCRIPT, dist)
    nets = build_nets(args, dist.device)
    for k in NETS if args.predict or args.eval_only else ():
        common.load_weights(nets[k], state["nets"][k], args.resume, k)
    if args.predict:
        return predict(args, nets["G_ema"], dist.device, run_dir) if dist.main else None
    data = load_data(args, dist)
    data["valset"] = test = None
    if dist.main:  # the judges are built (or trained) before restore_training restores the RNG state
        judges = make_judges(args, data)
        data["valset"], test = (EvalSet(args, data[k], data[f"{k}_labels"], judges, data["mem"], dist.device,
                                        figures=k == "test") for k in ("val", "test"))
        common.log(f"judge: {args.judge} on {args.judge_attr}; test baseline: "
                   + common.format_record(test.base_metrics))
    info = {"task": args.task, "bias": args.bias, "memory": args.memory, "paired_frac": args.paired_frac,
            "judge": args.judge, "judge_attr": args.judge_attr, "baseline": test and test.base_name,
            "world": dist.world, "n_inputs": len(data["inputs"]), "n_memory": len(data["mem"]),
            "n_val": len(data["val"]), "n_test": len(data["test"])}
    if args.eval_only:
        info.update(eval_only=True, checkpoint=args.resume, step=state["step"])
    else:
        opts = {k: torch.optim.Adam(nets[k].parameters(), lr, betas=(0.5, 0.999))
                for k, lr in (("G", args.lr), ("D", args.d_lr))}
        info.update(train(args, dist, data, nets, opts, state, run_dir) or {"stopped": True})
    if dist.main and "stopped" not in info:
        m = test.evaluate(nets["G_ema"], nets["D"], run_dir, info.get("step", args.steps))
        common.write_json(os.path.join(run_dir, "results.json"), {**m, **info})
        common.log(common.format_record(m) + f"\nresults in {run_dir}/results.json")


if __name__ == "__main__":
    common.run_main(main)
