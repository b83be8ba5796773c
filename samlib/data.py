"""Data for the course: Fashion-MNIST (bundled subset or full copy), CIFAR, label noise, scenes.

Offline by default: nothing is downloaded unless a function is called with ``download=True``.
Images are returned as ``uint8`` tensors (N x C x H x W); :func:`to_float` maps them to [0, 1].
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "load_fashion_mnist", "load_cifar", "add_label_noise", "fashion_scenes", "to_float", "Batches",
    "split_validation", "augment_batch", "AUGMENTATIONS", "DataError", "FASHION_CLASSES", "DEBIAN_FASHION_MNIST", "bundled_path",
    "SCENE_SUPERCLASSES", "SUPERCLASS_OF", "SCENE_LABELS", "scene_class_names",
]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Scene super-classes: shape-distinct groups of the ten classes (tops = T-shirt, pullover, coat, shirt;
# footwear = sandal, sneaker, ankle boot). SUPERCLASS_OF[c] is the super-class of Fashion-MNIST class c.
SCENE_SUPERCLASSES = ("tops", "trouser", "dress", "footwear", "bag")
SUPERCLASS_OF = (0, 1, 0, 2, 0, 3, 0, 3, 4, 3)
SCENE_LABELS = {"classes": FASHION_CLASSES, "superclasses": SCENE_SUPERCLASSES}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# sha256 of the *decompressed* official idx files (robust to how a distribution recompresses them)
FASHION_FILES = {
    "train": (("train-images-idx3-ubyte", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
              ("train-labels-idx1-ubyte", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9")),
    "test": (("t10k-images-idx3-ubyte", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
             ("t10k-labels-idx1-ubyte", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")),
}
BUNDLED_NAME = "fashion_mnist_subset.npz"
BUNDLED_SHA256 = "711cdeeeb195944cac4345e687f2ccd37696d69cc4c9537c733478974cfdcd7c"  # data/build_fashion_mnist.py prints it

CIFAR = {
    "cifar10": dict(archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py", md5="c58f30108f718f92721af3b95e74349a",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], label_key=b"labels",
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", classes=10),
    "cifar100": dict(archive="cifar-100-python.tar.gz", folder="cifar-100-python", md5="eb9058c3a382ffc7106e4002c42a8d85",
                     train=["train"], test=["test"], label_key=b"fine_labels",
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", classes=100),
}


class DataError(FileNotFoundError):
    """A dataset is missing or corrupt; the message says where the loader looked and what to do."""


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"Invalid split: {split!r}. split must be 'train' or 'test'.")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundled_path() -> Path:
    """Where the bundled Fashion-MNIST subset lives (``data/`` of the source checkout)."""
    env = os.environ.get("SAMLIB_BUNDLED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data" / BUNDLED_NAME


# ---- Fashion-MNIST ---------------------------------------------------------------------------

def _read_idx_bytes(folder: Path, name: str) -> bytes | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            raw = candidate.read_bytes()
            return gzip.decompress(raw) if candidate.suffix == ".gz" else raw
    return None


def _parse_idx(raw: bytes) -> np.ndarray:
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_candidates(root):
    if root is not None:
        return [("root", Path(root))]
    out = []
    if os.environ.get("SAMLIB_DATA"):
        out.append(("$SAMLIB_DATA", Path(os.environ["SAMLIB_DATA"])))
    out.append(("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST))
    return out


def _load_full_fashion(folder: Path, split: str):
    """The full split from idx files in ``folder`` (or ``folder/fashion-mnist``); None if absent."""
    for base in (folder, folder / "fashion-mnist", folder / "FashionMNIST" / "raw"):
        files = [_read_idx_bytes(base, name) for name, _ in FASHION_FILES[split]]
        if all(f is None for f in files):
            continue
        for (name, digest), raw in zip(FASHION_FILES[split], files):
            if raw is None:
                raise DataError(f"Fashion-MNIST in {base} is incomplete: {name}(.gz) is missing. "
                                f"Put all four idx files there, or pass download=True.")
            if _sha256(raw) != digest:
                raise DataError(f"Fashion-MNIST file {base / name} is corrupt (sha256 mismatch). Delete it and "
                                f"copy the official file again, or pass download=True.")
        images, labels = (_parse_idx(raw) for raw in files)
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    return None


def _download_fashion(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for name, digest in FASHION_FILES[split]:
            target = folder / f"{name}.gz"
            if target.is_file() and _sha256(gzip.decompress(target.read_bytes())) == digest:
                continue
            with urllib.request.urlopen(FASHION_URL + f"{name}.gz") as response:  # explicit user request only
                raw = response.read()
            if _sha256(gzip.decompress(raw)) != digest:
                raise DataError(f"Downloaded {name}.gz does not match its checksum; try again later.")
            target.write_bytes(raw)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None, download: bool = False,
                       subset: bool | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (Xiao et al., 2017; MIT licence) as ``(images, labels)``.

    ``images`` is ``uint8`` N x 1 x 28 x 28 (use :func:`to_float` for [0, 1]); ``labels`` is int64.

    Source, in order: a full copy in ``root``; else in ``$SAMLIB_DATA``; else at the Debian path
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``); else the
    bundled stratified subset (10k train / 2k test) in ``data/``. ``download=True`` fetches the
    official files into ``root`` (or ``$SAMLIB_DATA``) first. ``subset=True`` forces the bundled
    subset, ``subset=False`` requires a full copy. Every file is checked against its sha256.
    """
    _check_split(split)
    if download:
        target = root or os.environ.get("SAMLIB_DATA")
        if target is None:
            raise ValueError("download=True needs a destination: pass root=... or set $SAMLIB_DATA.")
        _download_fashion(Path(target))
    looked = []
    if subset is not True:
        for label, folder in _fashion_candidates(root):
            looked.append(f"{folder} ({label})")
            found = _load_full_fashion(folder, split)
            if found is not None:
                return found
        if root is not None or subset is False:
            raise DataError("No full Fashion-MNIST copy found; looked in: " + "; ".join(looked) + ". Copy the four "
                            "official idx(.gz) files there, run `apt-get install dataset-fashion-mnist`, or pass "
                            "download=True with root=... .")
    path = bundled_path()
    looked.append(f"{path} (bundled subset)")
    if not path.is_file():
        raise DataError("Fashion-MNIST not found; looked in: " + "; ".join(looked) + ". Rebuild the bundled "
                        "subset with `python data/build_fashion_mnist.py`, or get the full set (see data/README.md).")
    raw = path.read_bytes()
    if _sha256(raw) != BUNDLED_SHA256:
        raise DataError(f"The bundled subset {path} is corrupt (sha256 mismatch). Restore it with "
                        "`git checkout data/` or rebuild it with `python data/build_fashion_mnist.py`.")
    with np.load(path) as npz:
        return torch.from_numpy(npz[f"{split}_images"]).unsqueeze(1), torch.from_numpy(npz[f"{split}_labels"].astype(np.int64))


# ---- CIFAR ----------------------------------------------------------------------------------

def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_cifar(name: str = "cifar10", split: str = "train", root: str | os.PathLike | None = None,
               download: bool = False, verify: bool = True) -> tuple[Tensor, Tensor]:
    """CIFAR-10/100 from the official "python version" archive: ``(uint8 N x 3 x 32 x 32, int64 labels)``.

    Looks in ``root`` (default ``$SAMLIB_DATA``) for the ``.tar.gz`` archive or its extracted
    folder. ``download=True`` fetches the archive there. ``verify`` checks the archive's official md5.
    """
    _check_split(split)
    if name not in CIFAR:
        raise ValueError(f"Unknown dataset {name!r}. Choose 'cifar10' or 'cifar100'.")
    spec = CIFAR[name]
    root = root or os.environ.get("SAMLIB_DATA")
    if root is None:
        raise DataError(f"{name} needs a local copy: pass root=... (or set $SAMLIB_DATA) to a folder holding "
                        f"{spec['archive']}, or add download=True.")
    root = Path(root)
    archive, folder = root / spec["archive"], root / spec["folder"]
    if download and not archive.is_file() and not folder.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        urllib.request.urlretrieve(spec["url"], archive)  # explicit user request only
    batches = []
    if folder.is_dir():
        for part in spec[split]:
            if not (folder / part).is_file():
                raise DataError(f"{folder / part} is missing; re-extract {spec['archive']} into {root}.")
            batches.append(pickle.loads((folder / part).read_bytes(), encoding="bytes"))
    elif archive.is_file():
        if verify and _md5(archive) != spec["md5"]:
            raise DataError(f"{archive} is corrupt (md5 mismatch). Delete it and download it again "
                            f"(download=True), or pass verify=False for a deliberately modified archive.")
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for part in spec[split]:
                    batches.append(pickle.loads(tar.extractfile(f"{spec['folder']}/{part}").read(), encoding="bytes"))
        except (tarfile.TarError, KeyError, OSError, EOFError) as err:
            raise DataError(f"{archive} is not a valid {name} archive ({err}). Delete it and download it again.") from err
    else:
        raise DataError(f"{name} not found: looked for {archive} and {folder}. Download the python version "
                        f"archive there, or pass download=True.")
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[spec["label_key"]]) for b in batches]).astype(np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


# ---- label noise ----------------------------------------------------------------------------

def add_label_noise(labels: Tensor, rate: float, num_classes: int, seed: int,
                    kind: str = "symmetric") -> tuple[Tensor, Tensor]:
    """Flip exactly ``round(rate * N)`` labels, chosen uniformly; return ``(noisy_labels, flipped_mask)``.

    ``kind="symmetric"``: a flipped label becomes one of the *other* classes, uniformly.
    ``kind="pairflip"``: class c becomes (c + 1) mod ``num_classes``. A flipped label always
    differs from the true one. Deterministic for a given ``seed``.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Invalid rate: {rate!r}. The label-noise rate must lie in [0, 1).")
    if kind not in ("symmetric", "pairflip"):
        raise ValueError(f"Invalid kind: {kind!r}. Choose 'symmetric' or 'pairflip'.")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if num_classes < 2 or (labels.numel() and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"Invalid num_classes: {num_classes}. Labels span [{int(labels.min())}, "
                         f"{int(labels.max())}]; num_classes must exceed the largest label and be >= 2.")
    gen = torch.Generator().manual_seed(seed)
    n_flip = round(rate * labels.numel())
    idx = torch.randperm(labels.numel(), generator=gen)[:n_flip]
    noisy = labels.clone()
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (n_flip,), generator=gen)   # never 0: always a different class
        noisy[idx] = (labels[idx] + shift) % num_classes
    else:
        noisy[idx] = (labels[idx] + 1) % num_classes
    flipped = torch.zeros(labels.numel(), dtype=torch.bool)
    flipped[idx] = True
    return noisy, flipped


# ---- segmentation scenes --------------------------------------------------------------------

def scene_class_names(labels: str = "classes") -> tuple[str, ...]:
    """The mask classes of :func:`fashion_scenes` in index order: ``("background", *garment labels)``."""
    if labels not in SCENE_LABELS:
        raise ValueError(f"Invalid labels {labels!r}. Choose 'classes' (the 10 Fashion-MNIST classes) or "
                         "'superclasses' (tops, trouser, dress, footwear, bag).")
    return ("background", *SCENE_LABELS[labels])


def _balanced_garments(garments: Tensor, classes: Tensor, group_of: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The first garments of each class in source order, so that every label (``group_of[class]``)
    has the same count m (the rarest label's) and, inside a label, its classes share m equally."""
    groups: dict = {}
    for c, g in enumerate(group_of):
        groups.setdefault(g, []).append(c)
    counts = {g: sum(int((classes == c).sum()) for c in members) for g, members in groups.items()}
    m = min(counts.values())
    keep = []
    for members in groups.values():
        for i, c in enumerate(members):
            quota = m // len(members) + (i < m % len(members))
            keep.append(torch.nonzero(classes == c).flatten()[:quota])
    keep = torch.sort(torch.cat(keep)).values
    return garments[keep], classes[keep]


def fashion_scenes(n: int, seed: int, split: str = "train", size: int = 64, objects: tuple[int, int] = (2, 4),
                   scale: tuple[float, float] | None = None, mask_noise: float = 0.0, source=None,
                   return_clean: bool = False, subset: bool | None = True, labels: str = "classes",
                   balance: bool = False):
    """Scenes of 2-4 real Fashion-MNIST garments pasted on a textured ``size x size`` canvas.

    Returns ``(images, masks)``: images float n x 1 x size x size in [0, 1]; masks int64
    n x size x size with 0 = background and 1..K = garment label + 1. ``labels="classes"``
    labels the K = 10 Fashion-MNIST classes; ``labels="superclasses"`` the K = 5 shape-distinct
    :data:`SCENE_SUPERCLASSES` (tops, trouser, dress, footwear, bag) of the *same* scenes: the
    images, and which objects ``mask_noise`` relabels, are identical for a given ``seed``; only the
    labels differ (:func:`scene_class_names` names them). ``balance=True`` makes every label equally
    frequent: garments are drawn from an equal number per label (the rarest label's count, the first
    ones of each class in source order, shared equally by the classes of a super-class), so with
    super-classes the four kinds of tops no longer outnumber a bag four to one (on the stratified
    bundled subset the 10 classes are balanced already). Garments get a random position, scale
    (relative to 28 px) and paste order, so later ones occlude earlier ones.
    ``scale=None`` is (0.9, 1.6) on a 64-pixel canvas, shrunk in proportion on smaller ones, so
    garments fill the same fraction of any canvas.
    The images are real garments; the masks are *derived* (a pixel belongs to a garment where its
    intensity exceeds 0.1). ``mask_noise`` relabels that fraction of whole objects with a wrong
    label (one of the other K - 1, uniformly) in the mask: every pixel of the object, never the
    background and never to background; images untouched. ``return_clean=True`` also returns the clean masks.
    Deterministic per ``seed``; vectorized (affine_grid / grid_sample), so thousands take seconds.
    """
    if not 0.0 <= mask_noise < 1.0:
        raise ValueError(f"Invalid mask_noise: {mask_noise!r}. It must lie in [0, 1).")
    num_labels = len(scene_class_names(labels)) - 1
    if scale is None:
        scale = (0.9 * size / 64, 1.6 * size / 64)
    garments, classes = source if source is not None else load_fashion_mnist(split, subset=subset)
    group_of = SUPERCLASS_OF if labels == "superclasses" else tuple(range(len(FASHION_CLASSES)))
    if balance:
        garments, classes = _balanced_garments(garments, classes, group_of)
    classes = torch.tensor(group_of)[classes]
    garments = to_float(garments)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = objects
    count = torch.randint(lo, hi + 1, (n,), generator=gen)
    # background: smooth random texture plus faint stripes
    coarse = torch.rand(n, 1, 8, 8, generator=gen)
    texture = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    freq = torch.rand(n, 1, 1, 1, generator=gen) * 0.5 + 0.2
    stripes = torch.sin(torch.arange(size).float().view(1, 1, 1, size) * freq) * 0.5 + 0.5
    images = 0.15 * texture + 0.05 * stripes
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    clean = masks.clone()
    for k in range(hi):
        present = k < count
        pick = torch.randint(0, len(garments), (n,), generator=gen)
        s = torch.empty(n).uniform_(*scale, generator=gen) * 28 / size         # garment side / canvas side
        centre = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - s).clamp_min(0).unsqueeze(1)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
        theta[:, :, 2] = -centre / s.unsqueeze(1)
        grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
        obj = F.grid_sample(garments[pick], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        alpha = (obj > 0.1) & present.view(n, 1, 1, 1)
        images = torch.where(alpha, obj, images)
        label = classes[pick] + 1
        clean = torch.where(alpha[:, 0], label.view(n, 1, 1), clean)
        wrong = (torch.rand(n, generator=gen) < mask_noise) & present
        shift = torch.randint(1, num_labels, (n,), generator=gen)              # never 0: always another label
        shown = torch.where(wrong, (label - 1 + shift) % num_labels + 1, label)
        masks = torch.where(alpha[:, 0], shown.view(n, 1, 1), masks)
    images = images.clamp(0, 1)
    return (images, masks, clean) if return_clean else (images, masks)


# ---- augmentation ---------------------------------------------------------------------------

def augment_batch(x: Tensor, flip: bool = True, crop_pad: int = 4, cutout: int = 0) -> Tensor:
    """The standard CIFAR augmentation on a float batch, vectorized on its device (global torch RNG):
    random horizontal flips, random crops after ``crop_pad`` zero padding, and optionally Cutout
    (DeVries & Taylor, 2017) with a ``cutout`` x ``cutout`` square of zeros centred anywhere."""
    n, _, h, w = x.shape
    if flip:
        x = torch.where((torch.rand(n, 1, 1, 1, device=x.device) < 0.5), x.flip(-1), x)
    if crop_pad:
        padded = F.pad(x, (crop_pad,) * 4)
        dy = torch.randint(0, 2 * crop_pad + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * crop_pad + 1, (n,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if cutout:
        cy = torch.randint(0, h, (n, 1, 1, 1), device=x.device)
        cx = torch.randint(0, w, (n, 1, 1, 1), device=x.device)
        yy = torch.arange(h, device=x.device).view(1, 1, h, 1)
        xx = torch.arange(w, device=x.device).view(1, 1, 1, w)
        hole = ((yy - cy).abs() <= cutout // 2) & ((xx - cx).abs() <= cutout // 2)
        x = x.masked_fill(hole, 0.0)
    return x


AUGMENTATIONS = {"flip-crop": dict(flip=True, crop_pad=4, cutout=0), "flip-crop-cutout": dict(flip=True, crop_pad=4, cutout=16)}


# ---- batching -------------------------------------------------------------------------------

def to_float(images: Tensor) -> Tensor:
    """uint8 images to float32 in [0, 1]; floating-point images pass through unchanged."""
    if images.is_floating_point():
        return images
    return images.float().div_(255)


def split_validation(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(train_idx, val_idx)`` carving a validation split of ``fraction`` out of ``n`` examples."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Invalid fraction: {fraction!r}. The validation fraction must lie in (0, 1).")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * n))
    return perm[n_val:], perm[:n_val]


class Batches:
    """A fast in-memory batch iterator that keeps a small dataset on the training device.

    ``Batches(x, y, batch_size, shuffle=True, seed=0, device="cpu")``: each pass yields
    ``(x_batch, y_batch)``, with uint8 images converted to float in [0, 1] batch by batch. The
    order of epoch ``e`` depends only on ``seed`` and ``e``, so runs are reproducible and every
    method sees the same data order. Extra per-example tensors (e.g. clean labels) may be passed
    in ``extras`` and are yielded after ``y``.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = True, seed: int = 0,
                 device="cpu", drop_last: bool = False, extras: tuple = (), augment=None):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}.")
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}. It must be >= 1.")
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.extras = tuple(e.to(self.device) for e in extras)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.augment = augment
        self.epoch = 0

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = to_float(self.x[idx])
            if self.augment is not None:
                xb = self.augment(xb)
            yield (xb, self.y[idx], *(e[idx] for e in self.extras))
