"""A persistent on-disk cache of the teacher side, shared by every trial and worker of a study.

Two kinds of entry:

- a *stage-1 outcome* (:class:`TeacherSide`): the trained transform, projector and proxy
  classifier, and the proxy features and logits of the train, validation and unlabelled images;
  keyed by the teacher (name, weights identity), the stage-1 settings, the seed, the device type
  and the data by content (a digest of the images and labels);
- the frozen teacher's *features* of one split behind the static ``resize`` front end, keyed by
  the teacher, the device type and the images' digest: every proxy size and projector of a
  ``resize`` trial, and the ``kd`` and ``probe`` baselines, reuse one teacher pass over the pool.

Entries are written atomically under a file lock, so two workers needing the same entry compute
it once; an entry whose checksum or contents do not match is recomputed, never trusted.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import joblib
import torch

from tdmr_search.config import PipelineConfig
from tdmr_search.data import TargetData
from tdmr_search.errors import ConfigError
from tdmr_search.models.teachers import teacher_identity
from tdmr_search.pipeline.loop import Runtime, resolve_device

if TYPE_CHECKING:  # the type only: run.py is imported when an entry must be computed
    from tdmr_search.pipeline.run import TeacherSide

__all__ = ["TeacherCache", "cache_key", "feature_key", "data_digest", "tensor_digest"]

logger = logging.getLogger(__name__)

FORMAT = 2


def _teacher(config: PipelineConfig) -> dict:
    return {
        "format": FORMAT,
        "teacher": config.to_dict()["teacher"],
        "teacher_identity": teacher_identity(config.teacher),
        "device": resolve_device(config.device).type,
    }


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and values: what a cache entry computed from it depends on."""
    h = hashlib.sha256(f"{tuple(t.shape)} {t.dtype}".encode())
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_digest(data: TargetData) -> str:
    """The digest of everything stage 1 reads: train and val images and labels, unlabelled images."""
    parts = (data.train.images, data.train.labels, data.val.images, data.val.labels, data.unlabeled)
    return hashlib.sha256(" ".join(tensor_digest(t) for t in parts).encode()).hexdigest()


def cache_key(config: PipelineConfig, data: TargetData) -> str:
    """The key of the stage-1 outcome of ``config`` on ``data``: what determines it, hashed with joblib.

    The data enter by content (a digest of the images and labels), so two configs that select
    the same images share an entry and no entry can be read for images it was not computed on.
    """
    return joblib.hash({**_teacher(config), "reprogram": config.to_dict()["reprogram"], "seed": config.seed,
                        "data": data_digest(data)})


def feature_key(config: PipelineConfig, images: torch.Tensor) -> str:
    """The key of the teacher's ``resize`` features of ``images``: the teacher and the pixels."""
    return joblib.hash({**_teacher(config), "front_end": "resize", "images": tensor_digest(images)})


#: Default size limit of a teacher cache (``TDMR_CACHE_MAX_BYTES`` overrides it, e.g. "500M", "4G").
DEFAULT_MAX_BYTES = 4e9


def default_max_bytes() -> float:
    """The cache size limit: ``TDMR_CACHE_MAX_BYTES`` (an SI figure such as 500M) or 4 GB."""
    text = os.environ.get("TDMR_CACHE_MAX_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    scale = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(text[-1], 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"TDMR_CACHE_MAX_BYTES must be a size in bytes such as 500M or 4G; got {text!r}")
    return value


def _touch(entry: Path) -> None:
    """Mark an entry as used now (what least-recently-used pruning reads)."""
    try:
        os.utime(entry)
    except OSError:  # removed meanwhile, or a read-only cache: nothing to mark
        pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TeacherCache:
    """Stage-1 outcomes on disk, keyed by :func:`cache_key`.

    Args:
        folder: Where entries live (created when missing).
    """

    def __init__(self, folder: str | Path, max_bytes: float | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.hits = 0
        self.misses = 0
        self.feature_hits = 0
        self.feature_misses = 0

    @classmethod
    def beside(cls, folder: str | Path) -> TeacherCache:
        """A cache in ``folder`` (the study's ``<study>-cache`` folder)."""
        return cls(folder)

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return self.folder / f"{key}.joblib", self.folder / f"{key}.sha256", self.folder / f"{key}.lock"

    def load(self, key: str, data: TargetData) -> TeacherSide | None:
        """The entry under ``key`` if present and sound, else None (a bad entry is deleted)."""
        entry, digest, _ = self._paths(key)
        if not entry.exists() or not digest.exists():
            return None
        try:
            if _sha256(entry) != digest.read_text().strip():
                raise ValueError("checksum mismatch")
            side = joblib.load(entry)
            n_unl = 0 if side.z_unlabeled is None else len(side.z_unlabeled)
            if (len(side.z_train) != len(data.train) or len(side.z_val) != len(data.val)
                    or len(side.logits_train) != len(data.train) or n_unl != len(data.unlabeled)):
                raise ValueError("entry does not match the data")
        except Exception as err:  # corrupt, truncated, or from another format: recompute
            logger.warning("teacher cache entry %s is unusable (%s); recomputing", key[:12], err)
            for p in (entry, digest):
                p.unlink(missing_ok=True)
            return None
        return side

    def get_or_compute(self, config: PipelineConfig, data: TargetData) -> TeacherSide:
        """Return the cached stage-1 outcome of ``config``, computing and storing it on a miss.

        ``side.cache_hit`` tells the caller whether it came from the cache.
        """
        key = cache_key(config, data)
        entry, digest, lock = self._paths(key)
        with open(lock, "a+") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)  # a second worker waits here, then finds the entry
            try:
                side = self.load(key, data)
                if side is not None:
                    self.hits += 1
                    _touch(entry)
                    side.cache_hit = True
                    logger.info("teacher cache hit %s", key[:12])
                    return side
                self.misses += 1
                from tdmr_search.pipeline.run import reprogram_teacher, teacher_features

                runtime = Runtime.create(config.device)
                side = reprogram_teacher(config, data, runtime, features=teacher_features(config, runtime, self))
                side.cache_hit = False
                self._store(entry, digest, side)
                self.prune()
                logger.info("teacher cache stored %s (%.1fs of stage 1)", key[:12], side.seconds)
                return side
            finally:
                fcntl.flock(lock_fh, fcntl.LOCK_UN)

    def features(self, config: PipelineConfig, split: str, images: torch.Tensor,
                 compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The teacher's ``resize`` features of ``images`` (the ``split`` named in the log), computed on a miss."""
        key = feature_key(config, images)
        n = len(images)
        entry, digest, lock = self._paths(key)
        with open(lock, "a+") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)
            try:
                if entry.exists() and digest.exists():
                    try:
                        if _sha256(entry) != digest.read_text().strip():
                            raise ValueError("checksum mismatch")
                        feats = joblib.load(entry)
                        if not isinstance(feats, torch.Tensor) or len(feats) != n:
                            raise ValueError("entry does not match the data")
                        self.feature_hits += 1
                        _touch(entry)
                        return feats
                    except Exception as err:  # corrupt or stale: recompute
                        logger.warning("teacher feature entry %s is unusable (%s); recomputing", key[:12], err)
                        for p in (entry, digest):
                            p.unlink(missing_ok=True)
                self.feature_misses += 1
                t0 = time.perf_counter()
                feats = compute()
                seconds = time.perf_counter() - t0
                self._store(entry, digest, feats)
                self.prune()
                logger.info("teacher features of %d %s images: %.1fs (%.0f images/s), cached as %s", n, split,
                            seconds, n / max(seconds, 1e-9), key[:12])
                return feats
            finally:
                fcntl.flock(lock_fh, fcntl.LOCK_UN)

    @staticmethod
    def _store(entry: Path, digest: Path, value: object) -> None:
        tmp = entry.with_suffix(f".tmp{os.getpid()}")
        try:
            joblib.dump(value, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            digest.write_text(_sha256(tmp))
            os.replace(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)

    def size(self) -> int:
        """Bytes the entries take on disk."""
        return sum(p.stat().st_size for p in self.folder.glob("*.joblib"))

    def prune(self, max_bytes: float | None = None) -> int:
        """Delete the least recently used entries until the cache holds at most ``max_bytes``.

        Entries another process is writing (their lock is held) are left alone. Returns the bytes
        freed. Called after every entry stored, with the cache's own limit.
        """
        limit = self.max_bytes if max_bytes is None else max_bytes
        entries = []
        for p in self.folder.glob("*.joblib"):
            try:
                entries.append((p.stat().st_mtime, p.stat().st_size, p))
            except FileNotFoundError:  # removed by another worker meanwhile
                continue
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, entry in sorted(entries):
            if total - freed <= limit:
                break
            _, digest, lock = self._paths(entry.stem)
            with open(lock, "a+") as lock_fh:
                try:
                    fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # in use right now
                    continue
                try:
                    entry.unlink(missing_ok=True)
                    digest.unlink(missing_ok=True)
                    freed += size
                finally:
                    fcntl.flock(lock_fh, fcntl.LOCK_UN)
        if freed:
            logger.info("teacher cache: removed %.1f MB of least recently used entries (limit %.1f MB)", freed / 1e6,
                        limit / 1e6)
        return freed

    def __repr__(self) -> str:
        return f"TeacherCache({str(self.folder)!r}, hits={self.hits}, misses={self.misses})"
