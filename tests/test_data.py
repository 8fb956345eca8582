"""Target data: few-label sampling, the three splits, image folders and IDX files."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tdmr_search.config import DataConfig
from tdmr_search.data import DATASETS, FASHION_MNIST_ROOT, load_data, select_labelled
from tdmr_search.errors import DataError

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
needs_fashion = pytest.mark.skipif(
    not all((Path(FASHION_MNIST_ROOT) / f"{f}.gz").is_file() for f in FASHION_FILES),
    reason=f"Fashion-MNIST is not installed at {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)",
)


def _digits(**kw) -> DataConfig:
    return DataConfig(dataset="digits", **{"shots": 20, "val_fraction": 0.25, **kw})


def _counts(*splits) -> np.ndarray:
    labels = torch.cat([s.labels for s in splits]).numpy()
    return np.bincount(labels, minlength=10)


def _same_split(a, b) -> bool:
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


# ----------------------------------------------------------------------------- digits and sampling


def test_shots_are_stratified_over_train_and_val():
    data = load_data(_digits(), seed=0)
    assert np.array_equal(_counts(data.train, data.val), np.full(10, 20))
    assert (len(data.train), len(data.val)) == (150, 50)
    assert np.array_equal(_counts(data.val), np.full(10, 5))  # the validation split is stratified too
    assert np.array_equal(_counts(data.train), np.full(10, 15))
    assert data.num_classes == 10 and data.class_names == [str(i) for i in range(10)]
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.float32
    assert 0.0 <= float(data.train.images.min()) and float(data.train.images.max()) <= 1.0
    assert float(data.train.images.max()) == 1.0


def test_train_and_val_do_not_overlap():
    data = load_data(_digits(shots=None, fraction=None), seed=0)
    rows = {tuple(img.flatten().tolist()) for img in data.train.images}
    assert len(data.train) + len(data.val) == 1347
    overlap = sum(tuple(img.flatten().tolist()) in rows for img in data.val.images)
    assert overlap <= 5  # digits holds a few duplicate images; a leaking split would share ~all 269


def test_sampling_is_seeded():
    a, b, c = (load_data(_digits(), seed=s) for s in (0, 0, 1))
    assert _same_split(a.train, b.train) and _same_split(a.val, b.val)
    assert not torch.equal(a.train.images, c.train.images)
    labels = np.repeat(np.arange(5), 30)
    same = select_labelled(labels, 4, None, seed=3)
    assert np.array_equal(same, select_labelled(labels, 4, None, seed=3))
    assert not np.array_equal(same, select_labelled(labels, 4, None, seed=4))
    assert np.array_equal(np.bincount(labels[same]), np.full(5, 4))


def test_test_split_is_the_official_one_and_untouched_by_sampling():
    raw = DATASETS.create("digits")
    small = load_data(_digits(shots=5, val_fraction=0.2), seed=0)
    other = load_data(_digits(shots=30), seed=7)
    everything = load_data(_digits(shots=None), seed=3)
    assert len(small.test) == 450
    assert _same_split(small.test, other.test) and _same_split(small.test, everything.test)
    assert np.array_equal(small.test.labels.numpy(), raw.test_labels)
    assert torch.equal(small.test.images, torch.from_numpy(raw.test_images).float()[:, None] / 255.0)


def test_test_limit_is_stratified_and_seed_independent():
    a = load_data(_digits(test_limit=100), seed=0)
    b = load_data(_digits(test_limit=100), seed=5)
    assert len(a.test) == 100
    assert _same_split(a.test, b.test)
    counts = _counts(a.test)
    assert counts.min() >= 9 and counts.max() <= 11


def test_fraction_sampling():
    data = load_data(_digits(shots=None, fraction=0.5, val_fraction=0.2), seed=0)
    total = len(data.train) + len(data.val)
    assert total == 674  # round(0.5 * 1347)
    assert len(data.val) == 135
    full = np.bincount(DATASETS.create("digits").train_labels)
    assert np.all(np.abs(_counts(data.train, data.val) - full / 2) <= 1)
    again = load_data(_digits(shots=None, fraction=0.5, val_fraction=0.2), seed=0)
    assert _same_split(data.train, again.train)


def test_image_size_resizes_every_split():
    data = load_data(_digits(image_size=16), seed=0)
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (1, 16, 16)
    assert data.image_size == 16 and data.channels == 1


def test_too_many_shots_names_the_maximum():
    with pytest.raises(DataError, match=r"data\.shots=1000.*at most 131"):
        load_data(_digits(shots=1000), seed=0)
    assert len(select_labelled(DATASETS.create("digits").train_labels, 131, None, 0)) == 1310


def test_too_few_images_for_a_validation_split():
    with pytest.raises(DataError, match="at least one image per class"):
        load_data(_digits(shots=1, val_fraction=0.5), seed=0)


def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(DataError) as info:
        load_data(DataConfig(dataset="digts"), seed=0)
    message = str(info.value)
    assert "'digts'" in message and "did you mean 'digits'?" in message
    assert "fashion-mnist" in message and "imagefolder:PATH" in message


# ----------------------------------------------------------------------------- image folders


def _write_folder(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    from PIL import Image

    colours = {"cat": (230, 20, 20), "dog": (20, 20, 230)}
    for split, n in (("train", n_train), ("test", n_test)):
        for cls, colour in colours.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                size = (20 + 3 * i, 12 + 2 * i)  # mixed sizes, as real folders have
                Image.new("RGB", size, colour).save(folder / f"{i}.png")
    return root


def test_imagefolder(tmp_path):
    root = _write_folder(tmp_path / "pets")
    cfg = DataConfig(dataset=f"imagefolder:{root}", shots=None, val_fraction=0.34, image_size=16)
    data = load_data(cfg, seed=0)
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 6)
    assert data.train.images.shape[1:] == (3, 16, 16)
    for split in (data.train, data.val, data.test):
        assert np.array_equal(np.bincount(split.labels.numpy()), [len(split) // 2] * 2)
        red = split.images[:, 0].mean(dim=(1, 2))
        blue = split.images[:, 2].mean(dim=(1, 2))
        # the pixels are the files' own: cats are red, dogs are blue
        assert torch.all((red > blue) == (split.labels == 0))
        assert torch.allclose(red[split.labels == 0], torch.tensor(230 / 255), atol=1e-3)


def test_imagefolder_default_size_and_val_folder(tmp_path):
    root = _write_folder(tmp_path / "pets", n_train=4, n_test=2)
    (root / "test").rename(root / "val")
    data = load_data(DataConfig(dataset=f"imagefolder:{root}", shots=2, val_fraction=0.5), seed=0)
    assert data.image_size == 128  # mixed sizes: the documented default
    assert len(data.test) == 4


def test_imagefolder_missing_parts(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_data(DataConfig(dataset=f"imagefolder:{tmp_path / 'nothing'}", shots=None), seed=0)
    (tmp_path / "only-train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/ and test/"):
        load_data(DataConfig(dataset=f"imagefolder:{tmp_path / 'only-train'}", shots=None), seed=0)


def test_imagefolder_corrupt_image_is_a_data_error(tmp_path):
    root = _write_folder(tmp_path / "pets")
    (root / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    cfg = DataConfig(dataset=f"imagefolder:{root}", shots=None, val_fraction=0.34, image_size=16)
    with pytest.raises(DataError, match="Cannot read image"):
        load_data(cfg, seed=0)


# ----------------------------------------------------------------------------- IDX files (Fashion-MNIST)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_folder(root: Path, gz: bool = True, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_idx_files_in_a_root_folder(tmp_path, gz):
    arrays = _write_idx_folder(tmp_path / "fm", gz=gz)
    data = load_data(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "fm"), shots=3, val_fraction=0.34),
                     seed=0)
    assert len(data.test) == 20
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None] / 255.0
    assert torch.equal(data.test.images, expected)
    assert np.array_equal(np.bincount(torch.cat([data.train.labels, data.val.labels]).numpy()), [3] * 10)


@pytest.mark.parametrize("cut", [5, 100, -1], ids=["header", "body", "last-byte"])
def test_truncated_idx_file_is_a_data_error(tmp_path, cut):
    _write_idx_folder(tmp_path / "fm", gz=False)
    path = tmp_path / "fm" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        load_data(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "fm"), shots=2), seed=0)


def test_truncated_gzip_is_a_data_error(tmp_path):
    _write_idx_folder(tmp_path / "fm", gz=True)
    path = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_data(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "fm"), shots=2), seed=0)


def test_missing_idx_files_say_how_to_install(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "empty"), shots=2), seed=0)


def test_labels_and_images_that_disagree(tmp_path):
    _write_idx_folder(tmp_path / "fm", gz=False)
    (tmp_path / "fm" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(30) % 10))
    with pytest.raises(DataError, match="disagree on the number of images"):
        load_data(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "fm"), shots=2), seed=0)


@needs_fashion
def test_fashion_mnist_from_the_debian_package(tmp_path):
    data = load_data(DataConfig(dataset="fashion-mnist", shots=5, val_fraction=0.2), seed=0)
    assert len(data.test) == 10000
    assert data.test.images.shape == (10000, 1, 28, 28)
    assert np.array_equal(np.bincount(data.test.labels.numpy()), [1000] * 10)
    assert np.array_equal(_counts(data.train, data.val), [5] * 10)
    assert data.class_names[0] == "t-shirt/top" and data.num_classes == 10

    raw = DATASETS.create("fashion-mnist")
    assert np.asarray(raw.train_images).shape == (60000, 28, 28)
    assert np.asarray(raw.test_images).shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(raw.train_labels), [6000] * 10)

    copy = tmp_path / "fm"
    copy.mkdir()
    for stem in FASHION_FILES:
        shutil.copy(Path(FASHION_MNIST_ROOT) / f"{stem}.gz", copy)
    again = DATASETS.create("fashion-mnist", root=str(copy))
    assert np.array_equal(np.asarray(again.train_images), np.asarray(raw.train_images))
    assert np.array_equal(again.test_labels, raw.test_labels)


# ------------------------------------------------------------------ edge cases (once bugs)


@pytest.mark.parametrize("limit", [5, 445], ids=["below-classes", "leaves-out-fewer-than-classes"])
def test_any_valid_test_limit_loads_or_is_a_data_error(limit):
    try:
        data = load_data(_digits(test_limit=limit), seed=0)
    except DataError:
        return
    assert len(data.test) == limit


def test_a_fraction_close_to_one_loads_or_is_a_data_error():
    try:
        data = load_data(_digits(shots=None, fraction=0.995, val_fraction=0.2), seed=0)
    except DataError:
        return
    assert len(data.train) + len(data.val) == round(0.995 * 1347)
