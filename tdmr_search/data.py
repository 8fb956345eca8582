"""Labelled target data: loading by name, few-label sampling and the three splits.

Every dataset becomes three in-memory :class:`ImageSplit` tensors (float images in [0, 1],
shape N x C x H x W). ``train`` and ``val`` come from the official train split, sampled
stratified and seeded (``shots`` per class or a ``fraction``); ``test`` is the official test
split and is never used for selection.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from tdmr_search.config import DataConfig
from tdmr_search.errors import DataError
from tdmr_search.registry import Registry, did_you_mean

__all__ = [
    "ImageSplit", "TargetData", "RawDataset", "DATASETS", "load_data", "select_labelled", "dataset_names", "add_views",
    "augmented_views", "mixup_images",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
#: torchvision datasets reachable by name, with the split arguments their constructors take.
TORCHVISION_SPLITS: dict[str, tuple[str, dict, dict]] = {
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "mnist": ("MNIST", {"train": True}, {"train": False}),
    "kmnist": ("KMNIST", {"train": True}, {"train": False}),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}),
    "stl10": ("STL10", {"split": "train"}, {"split": "test"}),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
    "oxford-iiit-pet": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "food101": ("Food101", {"split": "train"}, {"split": "test"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}),
    "gtsrb": ("GTSRB", {"split": "train"}, {"split": "test"}),
    "eurosat": ("EuroSAT", {}, {}),
}
MIXED_SIZE_DEFAULT = 128


@dataclass
class ImageSplit:
    """Images (float32 in [0, 1], N x C x H x W) and their integer labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class TargetData:
    """The three splits of a target task, the unlabelled distillation inputs, and what describes them.

    ``unlabeled`` holds images only (no labels exist for them here): the pool, its augmented
    views and the mixup images, in that order; ``pool_size`` counts the pool images alone.
    """

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    class_names: list[str]
    unlabeled: torch.Tensor | None = None
    pool_size: int = 0

    def __post_init__(self) -> None:
        if self.unlabeled is None:
            self.unlabeled = self.train.images.new_zeros((0, *self.train.images.shape[1:]))

    @property
    def channels(self) -> int:
        """Channels of the stored images (1 or 3)."""
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side of the stored images."""
        return int(self.train.images.shape[-1])

    def summary(self) -> dict[str, int | str]:
        """Sizes of the splits, for logs and result files."""
        return {
            "dataset": self.name, "train": len(self.train), "val": len(self.val),
            "test": len(self.test), "classes": self.num_classes, "image_size": self.image_size,
            "pool": self.pool_size, "unlabeled": len(self.unlabeled),
        }

    def without_unlabeled(self) -> TargetData:
        """The same labelled splits with no pool (what a labels-only method sees)."""
        return dataclasses.replace(self, unlabeled=None, pool_size=0)


@dataclass
class RawDataset:
    """A dataset as its loader returns it, before sampling.

    ``train_images`` / ``test_images`` are either uint8 arrays (N x H x W or N x H x W x C) or a
    callable that loads the images at the given indices (for large or mixed-size datasets).
    """

    train_labels: np.ndarray
    test_labels: np.ndarray
    train_images: object
    test_images: object
    class_names: list[str]
    unlabeled_images: object = None
    """A separate source of unlabelled images (a callable of indices), when the dataset has one."""
    unlabeled_count: int = 0


DATASETS: Registry[RawDataset] = Registry("dataset")


def dataset_names() -> list[str]:
    """Every dataset name accepted by ``data.dataset``."""
    return DATASETS.names() + sorted(TORCHVISION_SPLITS) + ["imagefolder:PATH"]


@DATASETS.register("digits")
def _digits(root: str | None = None, download: bool = False, image_size: int | None = None) -> RawDataset:
    """scikit-learn's 1,797 8x8 digits; the official split does not exist, so a fixed 25% is test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=0.25, stratify=labels, random_state=0)
    return RawDataset(labels[train_idx], labels[test_idx], images[train_idx], images[test_idx],
                      [str(i) for i in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"Cannot read the IDX file {str(path)!r}: {err}") from None
    if len(data) < 8:
        raise DataError(f"The IDX file {str(path)!r} is truncated")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"The file {str(path)!r} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"The IDX file {str(path)!r} is truncated: expected {int(np.prod(shape))} values")
    return body.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] is not in {str(root)!r}; install the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set data.root to the folder "
        "holding the four IDX files"
    )


@DATASETS.register("fashion-mnist")
def _fashion_mnist(root: str | None = None, download: bool = False, image_size: int | None = None) -> RawDataset:
    """Fashion-MNIST from its IDX files (the Debian package dataset-fashion-mnist by default)."""
    folder = Path(root or os.environ.get("TDMR_FASHION_MNIST", FASHION_MNIST_ROOT))
    train_x = _read_idx(_find_idx(folder, "train-images-idx3-ubyte"))
    train_y = _read_idx(_find_idx(folder, "train-labels-idx1-ubyte")).astype(np.int64)
    test_x = _read_idx(_find_idx(folder, "t10k-images-idx3-ubyte"))
    test_y = _read_idx(_find_idx(folder, "t10k-labels-idx1-ubyte")).astype(np.int64)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(f"Fashion-MNIST files in {str(folder)!r} disagree on the number of images")
    return RawDataset(train_y, test_y, train_x, test_x, list(FASHION_MNIST_CLASSES))


def _pil_loader(dataset: object, size: int):
    """A callable loading items of a PIL-yielding dataset at the given indices as uint8 arrays."""
    from PIL import Image, UnidentifiedImageError

    samples = getattr(dataset, "samples", None)

    def to_rgb(image: Image.Image) -> Image.Image:
        # 16- and 32-bit greyscale ("I;16", "I") and float ("F") images scaled to 8 bits by their depth:
        # Pillow's convert("RGB") would clip every value above 255 to white
        if image.mode.startswith("I"):
            a = np.asarray(image).astype(np.float64)
            deep = image.mode.startswith("I;16") or image.format == "PNG" or (a.size and a.max() > 255)
            image = Image.fromarray(np.clip(np.rint(a * (255.0 / 65535.0 if deep else 1.0)), 0, 255).astype(np.uint8))
        elif image.mode == "F":
            a = np.asarray(image, dtype=np.float64)
            scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
            image = Image.fromarray(np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8))
        return image.convert("RGB")

    def read(i: int) -> object:
        if samples is not None and getattr(dataset, "transform", None) is None:
            with Image.open(samples[i][0]) as im:  # the file itself: the default loader clips deep images
                im.load()
                return im
        return dataset[i][0]

    def load(indices: np.ndarray) -> np.ndarray:
        out = []
        for i in indices:
            try:
                image = read(int(i))
            except (OSError, ValueError) as err:
                where = f"file {samples[int(i)][0]!r}" if samples is not None else f"{int(i)} of the dataset"
                reason = "cannot identify image file" if isinstance(err, UnidentifiedImageError) else str(err)
                raise DataError(
                    f"Cannot read image {where}: {reason}; accepted: image files that Pillow can open "
                    "(PNG, JPEG, BMP, ...); remove or replace it"
                ) from None
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image))
            image = to_rgb(image).resize((size, size), Image.BILINEAR)
            out.append(np.asarray(image, dtype=np.uint8))
        return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)

    return load


def _targets(dataset: object) -> np.ndarray:
    for attr in ("targets", "labels", "_labels", "_samples"):
        value = getattr(dataset, attr, None)
        if value is None:
            continue
        if attr == "_samples":
            value = [s[1] for s in value]
        return np.asarray(value, dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)  # type: ignore[arg-type]


def _torchvision(name: str, root: str | None, download: bool, image_size: int | None) -> RawDataset:
    import torchvision.datasets as tvd

    cls_name, train_kw, test_kw = TORCHVISION_SPLITS[name]
    folder = root or os.path.join(os.path.expanduser("~"), ".cache", "tdmr-search", "data")
    cls = getattr(tvd, cls_name)
    try:
        train = cls(folder, download=download, **train_kw)
        test = train if name == "eurosat" else cls(folder, download=download, **test_kw)
    except RuntimeError as err:
        hint = "" if download else "; set data.download: true to fetch it (needs a network), or data.root to the folder holding it"
        raise DataError(f"The torchvision dataset {name!r} is not in {folder!r}: {err}{hint}") from None
    except OSError as err:  # urllib's URLError (no network, a proxy, DNS) or a folder it cannot write
        import urllib.error

        reason = " ".join(f"{type(err).__name__}: {getattr(err, 'reason', None) or err}".split())[:200]
        if isinstance(err, (urllib.error.URLError, TimeoutError, ConnectionError)):
            raise DataError(
                f"The torchvision dataset {name!r} is not in {folder!r} and cannot be downloaded ({reason}); "
                "download it on a machine with a network and set data.root to the folder holding it, or use an "
                "offline dataset (fashion-mnist, digits, imagefolder:PATH)"
            ) from None
        raise DataError(
            f"The torchvision dataset {name!r} cannot be stored in {folder!r} ({reason}); set data.root to a "
            "writable folder"
        ) from None
    size = image_size or _native_size(train) or MIXED_SIZE_DEFAULT
    train_y, test_y = _targets(train), _targets(test)
    classes = [str(c) for c in getattr(train, "classes", sorted(set(train_y.tolist())))]
    if name == "eurosat":  # no official split: a fixed stratified 20% is test
        idx = np.arange(len(train_y))
        tr, te = train_test_split(idx, test_size=0.2, stratify=train_y, random_state=0)
        load = _pil_loader(train, size)
        return RawDataset(train_y[tr], train_y[te], lambda i: load(tr[i]), lambda i: load(te[i]), classes)
    return RawDataset(train_y, test_y, _pil_loader(train, size), _pil_loader(test, size), classes)


def _native_size(dataset: object) -> int | None:
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim >= 3:
        return int(data.shape[-2] if data.shape[-1] in (1, 3) and data.ndim == 4 else data.shape[-1])
    if isinstance(data, torch.Tensor) and data.ndim >= 3:
        return int(data.shape[-1])
    return None


def _imagefolder(path: str, image_size: int | None) -> RawDataset:
    import torchvision.datasets as tvd

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: {str(root)!r} is not a folder; expected PATH with train/ and test/ (or val/) subfolders of one folder per class")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(
            f"imagefolder: {str(root)!r} must hold train/ and test/ (or val/) subfolders, each with one folder per class"
        )
    try:
        train = tvd.ImageFolder(str(root / "train"))
        test = tvd.ImageFolder(str(test_dir))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(
            f"imagefolder: cannot read {str(root)!r}: {str(err).rstrip('.')}; expected train/ and test/ (or val/) subfolders, each "
            "with one folder of images per class"
        ) from None
    if train.classes != test.classes:
        raise DataError(
            f"imagefolder: train and {test_dir.name} of {str(root)!r} have different class folders "
            f"(train: {', '.join(train.classes)}; {test_dir.name}: {', '.join(test.classes)}); accepted: the same "
            "class folders in both"
        )
    size = image_size or MIXED_SIZE_DEFAULT
    raw = RawDataset(_targets(train), _targets(test), _pil_loader(train, size), _pil_loader(test, size),
                     list(train.classes))
    if (root / "unlabeled").is_dir():
        files = _UnlabeledFiles(root / "unlabeled")
        raw.unlabeled_images, raw.unlabeled_count = _pil_loader(files, size), len(files)
    return raw


class _UnlabeledFiles:
    """Every image file under a folder, any layout (sorted paths), as a dataset of (image, -1)."""

    def __init__(self, folder: Path) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.samples = [(str(p), -1) for p in sorted(folder.rglob("*"))
                        if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[object, int]:
        from PIL import Image

        with Image.open(self.samples[i][0]) as image:
            return image.copy(), -1  # copy() loads the pixels; the file closes here


def _raw(cfg: DataConfig) -> RawDataset:
    name = cfg.dataset
    if name.startswith("imagefolder:"):
        return _imagefolder(name.split(":", 1)[1], cfg.image_size)
    if name in TORCHVISION_SPLITS:
        return _torchvision(name, cfg.root, cfg.download, cfg.image_size)
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r} in data.dataset; accepted: {', '.join(dataset_names())}"
                        + did_you_mean(name, dataset_names()))
    return DATASETS.create(name, root=cfg.root, download=cfg.download, image_size=cfg.image_size)


def select_labelled(
    labels: np.ndarray, shots: int | None, fraction: float | None, seed: int
) -> np.ndarray:
    """Indices of a stratified, seeded sample: ``shots`` per class, or a ``fraction`` of all."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if shots is not None:
        if counts.min() < shots:
            worst = classes[counts.argmin()]
            raise DataError(
                f"data.shots={shots} asks for more images than class {int(worst)} has ({int(counts.min())}); "
                f"accepted: at most {int(counts.min())}"
            )
        rng = np.random.default_rng(seed)
        picked = [rng.choice(np.flatnonzero(labels == c), size=shots, replace=False) for c in classes]
        return np.sort(np.concatenate(picked))
    if fraction is not None and fraction < 1.0:
        n = max(int(round(fraction * len(labels))), len(classes))
        return _stratified_subset(labels, n, seed)
    return np.arange(len(labels))


def _stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` items, stratified when both parts can hold every class."""
    idx = np.arange(len(labels))
    if n >= len(labels):
        return idx
    n_classes = len(np.unique(labels))
    if n >= n_classes and len(labels) - n >= n_classes:
        chosen, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    else:  # too close to all (or none) of the items to stratify both parts: a seeded random subset
        chosen = np.random.default_rng(seed).choice(idx, size=n, replace=False)
    return np.sort(chosen)


def _to_tensor(images: np.ndarray, size: int | None) -> torch.Tensor:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def _take(images: object, idx: np.ndarray, size: int | None) -> torch.Tensor:
    if callable(images):
        return _to_tensor(images(idx), size)
    return _to_tensor(np.asarray(images)[idx], size)


def augmented_views(images: torch.Tensor, views: int, seed: int) -> torch.Tensor:
    """``views`` augmented copies of each image (seeded random crop and flip), view after view.

    The views are fixed for a seed, so everything computed from them (the teacher side) can be
    cached.
    """
    gen = torch.Generator().manual_seed(seed + 7919)
    x = images
    n, _, h, w = x.shape
    if not views or not n:
        return x.new_zeros((0, *x.shape[1:]))
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < h else "replicate")
    out = []
    for _ in range(views):
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5
        view = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
        view[flip] = view[flip].flip(-1)
        out.append(view)
    return torch.cat(out)


def add_views(split: ImageSplit, views: int, seed: int) -> ImageSplit:
    """The split followed by ``views`` augmented copies of each image (an epoch passes over all)."""
    extra = augmented_views(split.images, views, seed)
    return ImageSplit(torch.cat([split.images, extra]), split.labels.repeat(views + 1))


def mixup_images(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` fixed mixup images: seeded pairs of ``images`` mixed with a weight uniform in [0, 1]."""
    if not n or len(images) < 2:
        return images.new_zeros((0, *images.shape[1:]))
    gen = torch.Generator().manual_seed(seed + 104729)
    a = torch.randint(0, len(images), (n,), generator=gen)
    b = (a + torch.randint(1, len(images), (n,), generator=gen)) % len(images)  # never an image with itself
    lam = torch.rand(n, generator=gen).view(n, 1, 1, 1)
    return lam * images[a] + (1.0 - lam) * images[b]


def _pool_indices(n_train: int, cfg: DataConfig, n_classes: int, seed: int) -> np.ndarray:
    """The pool's indices in the train split, drawn (seeded) before the labelled images and
    without reading a label, so that no choice depends on the pool's labels."""
    if not cfg.unlabeled:
        return np.zeros(0, dtype=np.int64)
    labelled = cfg.shots * n_classes if cfg.shots is not None else (
        int(round((cfg.fraction or 1.0) * n_train)))
    left = n_train - labelled
    if cfg.unlabeled > left:
        raise DataError(
            f"data.unlabeled={cfg.unlabeled} asks for more images than the train split has left beside the "
            f"{labelled} labelled and validation images ({max(left, 0)} left); accepted: at most {max(left, 0)}"
        )
    rng = np.random.default_rng(seed + 1_000_003)
    return np.sort(rng.choice(n_train, size=cfg.unlabeled, replace=False))


def _unlabeled_from_folder(raw: RawDataset, cfg: DataConfig, seed: int) -> torch.Tensor:
    if cfg.unlabeled > raw.unlabeled_count:
        raise DataError(
            f"data.unlabeled={cfg.unlabeled} asks for more images than the unlabeled/ folder of {cfg.dataset!r} "
            f"holds ({raw.unlabeled_count}); accepted: at most {raw.unlabeled_count}"
        )
    idx = np.sort(np.random.default_rng(seed + 1_000_003).choice(raw.unlabeled_count, cfg.unlabeled, replace=False))
    return _take(raw.unlabeled_images, idx, cfg.image_size or MIXED_SIZE_DEFAULT)


def load_data(cfg: DataConfig, seed: int = 0) -> TargetData:
    """Load ``cfg.dataset`` and return its seeded train / val / test splits.

    Raises:
        DataError: the dataset is unknown, missing, unreadable, too small for the sampling asked,
            or has fewer than two classes.
    """
    raw = _raw(cfg)
    train_y = np.asarray(raw.train_labels, dtype=np.int64)
    test_y = np.asarray(raw.test_labels, dtype=np.int64)
    if len(train_y) == 0 or len(test_y) == 0:
        raise DataError(f"The dataset {cfg.dataset!r} is empty (train {len(train_y)}, test {len(test_y)} images)")
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise DataError(f"The dataset {cfg.dataset!r} has {len(classes)} class; classification needs at least 2")
    # the pool comes first, by index only; the labelled images are drawn from the rest
    pool_idx = np.zeros(0, dtype=np.int64) if raw.unlabeled_images is not None else \
        _pool_indices(len(train_y), cfg, len(classes), seed)
    rest = np.setdiff1d(np.arange(len(train_y)), pool_idx) if len(pool_idx) else np.arange(len(train_y))
    fraction = cfg.fraction  # of the whole train split
    if fraction is not None and len(pool_idx):
        fraction = min(1.0, fraction * len(train_y) / len(rest))
    chosen = rest[select_labelled(train_y[rest], cfg.shots, fraction, seed)]
    chosen_y = train_y[chosen]
    n_val = int(round(cfg.val_fraction * len(chosen)))
    if n_val < len(classes) or len(chosen) - n_val < len(classes):
        raise DataError(
            f"{len(chosen)} labelled images cannot be split into train and validation with at least one image "
            f"per class for each of {len(classes)} classes; raise data.shots (or data.fraction) or change "
            f"data.val_fraction ({cfg.val_fraction})"
        )
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    train_idx, val_idx = train_test_split(chosen, test_size=n_val, stratify=chosen_y, random_state=split_seed)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    test_idx = np.arange(len(test_y))
    if cfg.test_limit is not None and cfg.test_limit < len(test_y):
        n_test_classes = len(np.unique(test_y))
        if cfg.test_limit < n_test_classes:
            raise DataError(
                f"data.test_limit must be at least the number of test classes ({n_test_classes}) so every class is "
                f"evaluated; got {cfg.test_limit}"
            )
        test_idx = _stratified_subset(test_y, cfg.test_limit, 0)
    size = cfg.image_size
    train = ImageSplit(_take(raw.train_images, train_idx, size), torch.from_numpy(train_y[train_idx]))
    val = ImageSplit(_take(raw.train_images, val_idx, size), torch.from_numpy(train_y[val_idx]))
    test = ImageSplit(_take(raw.test_images, test_idx, size), torch.from_numpy(test_y[test_idx]))
    if raw.unlabeled_images is not None and cfg.unlabeled:
        pool = _unlabeled_from_folder(raw, cfg, seed)
    else:  # images only: the pool's labels are never taken
        pool = _take(raw.train_images, pool_idx, size) if len(pool_idx) else None
    pool_views = augmented_views(pool, cfg.augment_views, seed + 1) if pool is not None else None
    if cfg.augment_views:
        train = add_views(train, cfg.augment_views, seed)
    unlabeled = [t for t in (pool, pool_views) if t is not None and len(t)]
    if cfg.mixup:
        source = torch.cat([train.images, *unlabeled])
        unlabeled.append(mixup_images(source, cfg.mixup, seed))
    num_classes = max(int(train_y.max()), int(test_y.max())) + 1
    data = TargetData(cfg.dataset, train, val, test, num_classes, list(raw.class_names),
                      unlabeled=torch.cat(unlabeled) if unlabeled else None,
                      pool_size=0 if pool is None else len(pool))
    logger.info("data: %s", data.summary())
    return data
