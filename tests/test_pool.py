"""The unlabelled pool (DESIGN.md section 7): drawn outside the labelled images, labels never read,
views and mixup fixed by the seed, the teacher side cached with it, stage 2 on labelled + pool rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG

from tdmr_search.config import DataConfig, config_from_dict
from tdmr_search.data import DATASETS, RawDataset, _pool_indices, load_data
from tdmr_search.errors import DataError
from tdmr_search.pipeline.cache import TeacherCache
from tdmr_search.pipeline.run import run_pipeline
from tdmr_search.pipeline.stages import FEATURE_LOSSES, Phase, ProgressiveDistiller

POOL = {"unlabeled": 240, "augment_views": 1, "mixup": 60}


def _pool_config(**changes):
    raw = {**TINY_CONFIG, "data": {**TINY_CONFIG["data"], **POOL}, "distill": {**TINY_CONFIG["distill"], "epochs": 2}}
    return config_from_dict(raw).replace(changes)


def _digits_cfg(**kw) -> DataConfig:
    return DataConfig(**{**TINY_CONFIG["data"], **POOL, **kw})


def _digits_with_shuffled_pool_labels(**kw) -> RawDataset:
    """scikit-learn digits whose labels at the pool's positions are permuted (a derangement)."""
    raw = DATASETS.create("digits", **kw)
    labels = raw.train_labels.copy()
    pool = _pool_indices(len(labels), _digits_cfg(), 10, TINY_CONFIG["seed"])
    labels[pool] = (labels[pool] + 1 + np.arange(len(pool)) % 9) % 10  # every pool label changes
    return RawDataset(labels, raw.test_labels, raw.train_images, raw.test_images, raw.class_names)


@pytest.fixture
def shuffled_dataset():
    """Registers 'digits-pool-labels-shuffled' for one test (the dataset contract covers only shipped ones)."""
    DATASETS.register("digits-pool-labels-shuffled")(_digits_with_shuffled_pool_labels)
    yield "digits-pool-labels-shuffled"
    DATASETS._factories.pop("digits-pool-labels-shuffled")


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_result(a, b) -> None:
    for key in ("val_acc", "test_acc", "teacher_val_acc"):
        assert a.metrics[key] == b.metrics[key], key
    for ha, hb in zip(a.metrics["history"], b.metrics["history"], strict=True):
        for key in ("loss", "feat", "kd", "ce", "val_acc"):
            assert ha[key] == hb[key], key
    for k, v in _weights(a.model).items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_pool_is_drawn_outside_the_labelled_and_validation_images_and_recorded():
    data = load_data(_digits_cfg(augment_views=0, mixup=0), 0)
    raw = DATASETS.create("digits")
    pool_idx = _pool_indices(len(raw.train_labels), _digits_cfg(), 10, 0)
    assert data.pool_size == len(data.unlabeled) == 240
    expected = torch.from_numpy(raw.train_images[pool_idx]).float().div(255.0)[:, None]
    assert torch.equal(data.unlabeled, expected)  # the train split's own pixels, by index
    labelled = torch.cat([data.train.images, data.val.images]).flatten(1)
    distances = torch.cdist(data.unlabeled.flatten(1), labelled)
    assert distances.min(dim=1).values.gt(0).float().mean() > 0.99  # (digits holds a few exact duplicates)
    assert data.summary()["pool"] == 240 and data.summary()["unlabeled"] == 240
    assert len(data.train) == 150 and len(data.val) == 50  # the labelled split is as asked


def test_views_and_mixup_are_fixed_by_the_seed():
    a, b, c = load_data(_digits_cfg(), 0), load_data(_digits_cfg(), 0), load_data(_digits_cfg(), 1)
    assert len(a.unlabeled) == 240 * 2 + 60 and a.pool_size == 240
    assert torch.equal(a.unlabeled, b.unlabeled) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.unlabeled, c.unlabeled)
    views, mixed = a.unlabeled[240:480], a.unlabeled[480:]
    assert not torch.equal(views, a.unlabeled[:240])  # augmented, not copies
    assert mixed.min() >= 0 and mixed.max() <= 1
    sources = torch.cat([a.train.images, a.unlabeled[:480]]).flatten(1)
    assert torch.cdist(mixed.flatten(1), sources).min(dim=1).values.gt(0).float().mean() > 0.9  # new images


def test_a_pool_larger_than_what_is_left_is_a_one_line_error():
    with pytest.raises(DataError, match=r"data.unlabeled=5000 .* accepted: at most 1147") as err:
        load_data(_digits_cfg(unlabeled=5000), 0)
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tdmr", "kd"])
def test_pool_labels_are_never_read(method, shuffled_dataset):
    """Changing every pool label in the source changes nothing, bit for bit (CPU)."""
    config = _pool_config(method=method)
    shuffled_cfg = config.replace({"data.dataset": "digits-pool-labels-shuffled"})
    data = load_data(config.data, config.seed)
    shuffled = load_data(shuffled_cfg.data, config.seed)
    raw, raw_shuffled = DATASETS.create("digits"), DATASETS.create("digits-pool-labels-shuffled")
    assert (raw.train_labels != raw_shuffled.train_labels).sum() == 240
    _same_result(run_pipeline(config, data=data), run_pipeline(shuffled_cfg, data=shuffled))


@pytest.mark.slow
@pytest.mark.parametrize("transform", ["resize", "pad"])
def test_hit_equals_miss_with_a_pool(tmp_path, transform):
    config = _pool_config(**{"reprogram.transform": transform})
    data = load_data(config.data, config.seed)
    plain = run_pipeline(config, data=data)
    miss = run_pipeline(config, data=data, cache=TeacherCache(tmp_path))
    cache = TeacherCache(tmp_path)
    hit = run_pipeline(config, data=data, cache=cache)
    assert (miss.metrics["teacher_cached"], hit.metrics["teacher_cached"]) == (False, True)
    _same_result(plain, miss)
    _same_result(plain, hit)


@pytest.mark.slow
def test_resize_front_end_pays_the_teacher_once_for_every_proxy_size_and_for_kd(tmp_path):
    config = _pool_config(**{"reprogram.transform": "resize"})
    data = load_data(config.data, config.seed)
    cache = TeacherCache(tmp_path)
    run_pipeline(config, data=data, cache=cache)
    assert (cache.feature_misses, cache.feature_hits) == (3, 0)  # train, val, unlabeled
    other = TeacherCache(tmp_path)
    run_pipeline(config.replace({"reprogram.proxy_dim": 16, "reprogram.projector": "mlp"}), data=data, cache=other)
    run_pipeline(config.replace({"method": "kd"}), data=data, cache=other)
    assert (other.misses, other.feature_misses, other.feature_hits) == (1, 0, 6)


def test_stage2_distils_on_every_row_and_uses_labels_of_labelled_rows_only():
    config = _pool_config()
    data = load_data(config.data, config.seed)
    result = run_pipeline(config, data=data)
    history = result.metrics["history"]
    assert len(history) == 2 and result.metrics["data"]["unlabeled"] == len(data.unlabeled)
    # the loss function: cross-entropy over the first len(y) rows only
    student = result.model.train()
    distiller = ProgressiveDistiller(student, "mse")
    x = torch.cat([data.train.images[:4], data.unlabeled[:12]])
    phase = Phase(0, 1, 0.0, 0.0, 1.0, 1.0, True)
    with torch.no_grad():
        out = distiller(x, data.train.labels[:4], None, None, phase)
        expected = torch.nn.functional.cross_entropy(out["logits"][:4], data.train.labels[:4])
    assert torch.allclose(out["ce"], expected)


def test_scratch_never_sees_the_pool():
    config = _pool_config(method="scratch")
    data = load_data(config.data, config.seed)
    _same_result(run_pipeline(config, data=data), run_pipeline(config, data=data.without_unlabeled()))


def test_cka_loss_sees_geometry_not_coordinates():
    cka = FEATURE_LOSSES.get("cka")
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=gen)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    assert cka(3.0 * z @ rotation + 1.0, z).abs() < 1e-5
    assert cka(torch.randn(64, 16, generator=gen), z) > 0.3


def _write_folder(root, unlabeled: int | None):
    from PIL import Image

    for split, n in (("train", 12), ("test", 3)):
        for cls, colour in {"cat": (230, 20, 20), "dog": (20, 20, 230)}.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 16), colour).save(root / split / cls / f"{i}.png")
    if unlabeled:
        for i in range(unlabeled):  # any layout: nested folders, grey and colour
            folder = root / "unlabeled" / ("a" if i % 2 else "b/c")
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.new("L", (10 + i, 14), 128) if i % 3 else Image.new("RGB", (10 + i, 14), (128, 128, 128))
            image.save(folder / f"u{i}.jpg")
    return root


def test_imagefolder_pool_from_unlabeled_folder(tmp_path):
    root = _write_folder(tmp_path / "pets", unlabeled=9)
    data = load_data(DataConfig(dataset=f"imagefolder:{root}", shots=4, val_fraction=0.5, image_size=16,
                                unlabeled=7), 0)
    assert data.pool_size == 7 and data.unlabeled.shape == (7, 3, 16, 16)
    assert torch.allclose(data.unlabeled, torch.tensor(128 / 255), atol=2 / 255)  # the folder's grey images
    with pytest.raises(DataError, match=r"unlabeled/ folder .* holds \(9\); accepted: at most 9"):
        load_data(DataConfig(dataset=f"imagefolder:{root}", shots=4, val_fraction=0.5, unlabeled=10), 0)


def test_imagefolder_pool_from_train_without_unlabeled_folder(tmp_path):
    root = _write_folder(tmp_path / "pets", unlabeled=None)
    data = load_data(DataConfig(dataset=f"imagefolder:{root}", shots=4, val_fraction=0.5, image_size=16,
                                unlabeled=6), 0)
    assert data.pool_size == 6 and (len(data.train), len(data.val)) == (4, 4)
    red, blue = data.unlabeled[:, 0].mean(dim=(1, 2)), data.unlabeled[:, 2].mean(dim=(1, 2))
    assert torch.all((red > 0.8) | (blue > 0.8))  # train images (cats or dogs), labels unread
