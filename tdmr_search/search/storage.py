"""The study store: storage URLs, opening (and creating) the SQL store, the artifact store.

One Optuna study per search in any SQLAlchemy URL (default ``sqlite:///studies/<study>.db``),
heartbeats on so a trial whose worker died is marked failed and retried with the same
parameters; the student weights of the best few trials in a file-system artifact store beside it.
Every failure here is one line that names the store and what is accepted.
"""

from __future__ import annotations

import errno
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from tdmr_search.errors import ConfigError, StudyError, TdmrError
from tdmr_search.fsio import disk_error, is_disk_error, write_with
from tdmr_search.search.secrets import redact

__all__ = [
    "HEARTBEAT_SECONDS", "GRACE_SECONDS", "SQLITE_MAX_WORKERS", "OPTUNA_TABLES", "check_study_name",
    "default_storage", "sqlite_path", "check_url", "check_sqlite_writable", "open_storage", "load_study",
    "artifact_dir", "AtomicArtifactStore", "store_error", "mkdirs_or_fail", "remove_empty",
]


#: Heartbeat of running trials and how long one may be silent before it counts as dead
#: (TDMR_HEARTBEAT_SECONDS / TDMR_GRACE_SECONDS override them, e.g. in tests).
HEARTBEAT_SECONDS = int(os.environ.get("TDMR_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = int(os.environ.get("TDMR_GRACE_SECONDS", "30"))
SQLITE_MAX_WORKERS = 4
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
def check_study_name(name: str) -> None:
    """Raise unless ``name`` is usable as a study and file name."""
    if not isinstance(name, str) or not _STUDY_NAME.fullmatch(name):  # fullmatch: no trailing newline
        raise ConfigError(
            f"The study name must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit; got {name!r}"
        )


def default_storage(study: str) -> str:
    """``sqlite:///studies/<study>.db`` (relative to the working folder)."""
    check_study_name(study)
    return f"sqlite:///studies/{study}.db"


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def check_url(url: str) -> None:
    """Raise :class:`StudyError` for a store that cannot outlive the process (in-memory SQLite)."""
    if url.startswith("sqlite") and (url.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://") or ":memory:" in url
                                     or "mode=memory" in url):
        raise StudyError(
            f"The storage URL {url!r} is an in-memory SQLite database: it vanishes when the process ends, so no "
            "worker, resume, export or dashboard could ever read it; accepted: sqlite:///PATH (a file) or a database URL"
        )


#: The tables of an Optuna study store; a database holding other tables and none of these is not ours.
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_user_attributes", "trial_system_attributes",
    "trial_heartbeats", "version_info", "alembic_version",
})


def _check_tables(url: str, engine_kwargs: dict[str, Any], allow_other_tables: bool | None) -> None:
    """Refuse a database that holds tables but no Optuna study store (an application's database)."""
    import sqlalchemy

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return  # a new file: nothing in it yet
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        names = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if not names or {"studies", "trials", "version_info"} <= names or allow_other_tables:
        return
    shown = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    hint = ("; use a database (or SQLite file) of its own, or pass --allow-other-tables to add Optuna's "
            f"{len(OPTUNA_TABLES)} tables beside them" if allow_other_tables is False else
            "; it holds no study to read")
    raise StudyError(f"The store {redact(url)!r} is not an Optuna study store: it holds other tables ({shown})" + hint)


def _driver_error(url: str, err: ImportError) -> StudyError:
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    except Exception:  # noqa: BLE001 - an unknown dialect: name what we can
        backend, driver = url.partition(":")[0], "its driver"
    name = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}.get(backend, backend)
    missing = err.name or str(err).splitlines()[0] or driver
    return StudyError(
        f"The storage URL {redact(url)!r} needs the {name} driver {driver!r}, which cannot be imported ({missing}); "
        "accepted: pip install 'tdmr-search[db]' and a URL naming its drivers, postgresql+psycopg://user@host/db or "
        "mysql+pymysql://user@host/db"
    )


def check_sqlite_writable(url: str) -> None:
    """Raise :class:`StudyError` when a SQLite store's file or folder cannot be written."""
    path = sqlite_path(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise PermissionError("not writable")
    except OSError as err:
        raise StudyError(
            f"Cannot write the study store {str(path)!r} ({getattr(err, 'strerror', None) or err}); "
            "choose a writable --storage sqlite:///PATH or a database URL"
        ) from None


def open_storage(url: str, heartbeat: bool = True, wal: bool = False,
                 allow_other_tables: bool | None = None) -> RDBStorage:
    """Open (creating when needed) the study store at ``url``.

    SQLite gets a long busy timeout, and with ``wal`` (what ``run`` asks for) WAL journaling so a
    few local workers can share it; read-only commands leave the file as it is. A database that
    holds other tables and no Optuna store is refused: ``allow_other_tables`` True adds the store
    beside them (``run --allow-other-tables``), False refuses naming that flag, None (commands
    that only read) refuses.
    """
    check_url(url)
    engine_kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    if path is not None:
        check_sqlite_writable(url)
    elif url.startswith(("postgresql", "mysql", "mariadb")):
        engine_kwargs["pool_pre_ping"] = True
    kw: dict[str, Any] = {}
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            kw = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": GRACE_SECONDS,
                  "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2)}
    try:
        _check_tables(url, engine_kwargs, allow_other_tables)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = _create_storage(url, engine_kwargs, kw)
    except ImportError as err:
        raise _driver_error(url, err) from None
    except StudyError:
        raise
    except Exception as err:  # sqlalchemy errors: bad URL, server down, auth, a full disk
        if is_disk_error(err):
            raise disk_error(err, path if path is not None else redact(url), "study store",
                             "free space, or choose another --storage") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StudyError(f"Cannot open the study store {redact(url)!r}: {redact(first)[:300]}") from None
    if path is not None and wal:
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _create_storage(url: str, engine_kwargs: dict[str, Any], kw: dict[str, Any]) -> RDBStorage:
    """``RDBStorage(url)``; when two processes create a new store's schema at once, the loser's
    insert of the schema version fails on a unique constraint: the schema is there now, so the
    second try opens it."""
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kw)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as err:
            if attempt == 2 or is_disk_error(err) or ("UNIQUE" not in str(err) and "locked" not in str(err)
                                                      and "already exists" not in str(err)):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def load_study(study: str, storage: str | None) -> optuna.Study:
    """Load an existing study, with a clear error listing the studies the store holds."""
    check_study_name(study)
    url = storage or default_storage(study)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise StudyError(f"No study store at {str(path)!r}; run `tdmr-search run --study {study} ...` first or pass --storage")
    rdb = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name=study, storage=rdb)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
        raise StudyError(
            f"The store {redact(url)!r} holds no study {study!r}; it holds: {', '.join(names) or 'none'}"
        ) from None


def artifact_dir(study: str, storage: str | None, override: str | None = None) -> Path:
    """The artifact store folder: ``--artifacts``, else beside a SQLite file, else studies/<study>-artifacts."""
    if override:
        return Path(override)
    path = sqlite_path(storage or default_storage(study))
    folder = path.parent if path is not None else Path("studies")
    return folder / f"{study}-artifacts"



def _mkdirs(folder: Path, created: list[Path]) -> None:
    """``mkdir -p folder``, noting in ``created`` each folder it made."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    created.extend(reversed(missing))


def remove_empty(created: list[Path]) -> None:
    """Remove the folders a run made and left empty (innermost first)."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:  # not empty, or gone
            pass

def store_error(err: BaseException, url: str) -> TdmrError:
    """One line for an error of the store itself during a run (a full disk, a server gone)."""
    where = sqlite_path(url)
    if is_disk_error(err):
        return disk_error(err, where if where is not None else redact(url), "study store",
                          "free space (or choose another --storage); a trial left RUNNING is marked failed by the "
                          "next run, every finished trial is kept")
    inner = err
    while inner.__context__ is not None and isinstance(inner, AssertionError):  # Optuna's "Should not reach."
        inner = inner.__context__
    first = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
    return StudyError(f"The study store {redact(url)!r} failed during the run: {redact(first)[:300]}; every finished "
                      "trial is kept, run again to resume")


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, writing each file whole (a temporary name, then a rename)."""

    def write(self, artifact_id: str, content_body: Any) -> None:  # noqa: ANN401
        import shutil

        write_with(os.path.join(self._base_path, artifact_id), lambda fh: shutil.copyfileobj(content_body, fh),
                   "student weights in the artifact store",
                   "free space, or choose another --artifacts folder")


def mkdirs_or_fail(folder: Path, created: list[Path], what: str, hint: str) -> None:
    try:
        _mkdirs(folder, created)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as err:
        raise StudyError(f"Cannot write the {what} ({getattr(err, 'strerror', None) or err}); {hint}") from None
