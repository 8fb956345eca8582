"""The teacher-side cache: a hit equals a miss, bad entries are recomputed, two processes compute once."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from tdmr_search.pipeline.cache import TeacherCache, cache_key
from tdmr_search.pipeline.run import run_pipeline


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_hit_gives_the_same_stage2_result_as_a_miss_and_as_no_cache(tmp_path, tiny_config, digits_data):
    plain = run_pipeline(tiny_config, data=digits_data)
    cache = TeacherCache(tmp_path / "cache")
    miss_side = cache.get_or_compute(tiny_config, digits_data)
    miss = run_pipeline(tiny_config, data=digits_data, teacher_side=miss_side)
    hit_side = TeacherCache(tmp_path / "cache").get_or_compute(tiny_config, digits_data)
    hit = run_pipeline(tiny_config, data=digits_data, teacher_side=hit_side)
    assert (miss_side.cache_hit, hit_side.cache_hit) == (False, True)
    assert (miss.metrics["teacher_cached"], hit.metrics["teacher_cached"]) == (False, True)
    assert hit.metrics["seconds"]["stage1"] == 0.0
    for result in (miss, hit):
        assert result.metrics["val_acc"] == plain.metrics["val_acc"]
        assert result.metrics["test_acc"] == plain.metrics["test_acc"]
        assert result.metrics["teacher_val_acc"] == plain.metrics["teacher_val_acc"]
        for k, v in _weights(plain.model).items():
            assert torch.equal(v, result.model.state_dict()[k]), k


def test_key_depends_on_stage1_settings_and_the_data_content_only(tiny_config, digits_data):
    from tdmr_search.data import load_data

    key = cache_key(tiny_config, digits_data)
    assert cache_key(tiny_config.replace({"distill.temperature": 9.0, "student.resolution": 24}), digits_data) == key
    assert cache_key(tiny_config.replace({"data.test_limit": 100}), digits_data) == key  # stage 1 never sees test
    for change in ({"reprogram.proxy_dim": 16}, {"reprogram.transform": "conv"}, {"seed": 1},
                   {"teacher.input_size": 48}):
        assert cache_key(tiny_config.replace(change), digits_data) != key, change
    other = load_data(tiny_config.data.__class__(**{**tiny_config.to_dict()["data"], "shots": 10}), 0)
    assert cache_key(tiny_config, other) != key
    assert cache_key(tiny_config, other.without_unlabeled()) == cache_key(tiny_config, other)


def test_corrupted_entry_is_recomputed(tmp_path, tiny_config, digits_data):
    cache = TeacherCache(tmp_path)
    first = cache.get_or_compute(tiny_config, digits_data)
    entry = tmp_path / f"{cache_key(tiny_config, digits_data)}.joblib"
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum no longer matches
    entry.write_bytes(bytes(data))
    again = cache.get_or_compute(tiny_config, digits_data)
    assert again.cache_hit is False and cache.misses == 2
    assert torch.equal(again.z_train, first.z_train)
    entry.write_bytes(b"not a joblib file")  # and garbage with a fresh checksum file gone
    (tmp_path / f"{cache_key(tiny_config, digits_data)}.sha256").unlink()
    assert cache.get_or_compute(tiny_config, digits_data).cache_hit is False


def _worker(folder: str, barrier, out) -> None:
    from conftest import TINY_CONFIG

    from tdmr_search.config import config_from_dict
    from tdmr_search.data import load_data

    torch.set_num_threads(1)  # two processes on two cores
    config = config_from_dict(TINY_CONFIG)
    data = load_data(config.data, config.seed)
    barrier.wait()
    side = TeacherCache(folder).get_or_compute(config, data)
    out.put((side.cache_hit, side.z_train.sum().item()))


@pytest.mark.slow
def test_two_processes_asking_at_once_compute_once(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(hit for hit, _ in results) == [False, True]  # one computed, the other waited and read
    assert results[0][1] == results[1][1]


def test_augmented_views_are_fixed_so_the_cache_serves(tmp_path, tiny_config):
    from tdmr_search.data import load_data

    config = tiny_config.replace({"data.augment_views": 2})
    data = load_data(config.data, config.seed)
    plain = load_data(tiny_config.data, tiny_config.seed)
    assert len(data.train) == 3 * len(plain.train) and len(data.val) == len(plain.val)
    assert torch.equal(data.train.images[: len(plain.train)], plain.train.images)
    assert not torch.equal(data.train.images[len(plain.train):2 * len(plain.train)], plain.train.images)
    assert torch.equal(load_data(config.data, config.seed).train.images, data.train.images)  # seeded
    cache = TeacherCache(tmp_path)
    assert cache.get_or_compute(config, data).cache_hit is False
    assert cache.get_or_compute(config, load_data(config.data, config.seed)).cache_hit is True
    assert cache.get_or_compute(tiny_config, plain).cache_hit is False  # views change the key


def test_cache_keeps_under_its_size_limit_dropping_the_least_recently_used(tmp_path, tiny_config, digits_data,
                                                                          monkeypatch):
    import os

    import pytest

    from tdmr_search.errors import ConfigError
    from tdmr_search.pipeline.cache import default_max_bytes

    cache = TeacherCache(tmp_path, max_bytes=float("inf"))
    first = tiny_config.replace({"reprogram.proxy_dim": 16})
    cache.get_or_compute(first, digits_data)
    cache.get_or_compute(tiny_config, digits_data)
    entries = sorted(tmp_path.glob("*.joblib"))
    assert len(entries) == 2
    old = tmp_path / f"{cache_key(first, digits_data)}.joblib"
    os.utime(old, (1, 1))  # used long ago
    old_size = old.stat().st_size
    keep = cache.size() - old_size
    assert cache.prune(keep) == old_size
    assert not old.exists() and cache.size() <= keep
    assert cache.get_or_compute(tiny_config, digits_data).cache_hit is True  # the recent one stayed
    limited = TeacherCache(tmp_path, max_bytes=0)  # every store prunes to the limit (its own entry stays: in use)
    limited.get_or_compute(first, digits_data)
    assert (tmp_path / f"{cache_key(tiny_config, digits_data)}.joblib").exists() is False
    monkeypatch.setenv("TDMR_CACHE_MAX_BYTES", "500M")
    assert default_max_bytes() == 500e6
    monkeypatch.setenv("TDMR_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="such as 500M"):
        default_max_bytes()
