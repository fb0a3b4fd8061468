"""Results on disk: output checks, a lock, checksummed parts with a manifest, atomic writes and resume.

One run called NAME in the directory OUT owns these files:

    OUT/NAME.nc                    the result (written last)
    OUT/NAME.lock                  {"pid", "host", "started"} while a run writes; a dead pid's lock is taken
                                   over with a warning, a live one refuses the second writer
    OUT/NAME.parts/manifest.json   what the parts belong to (spec hash, code, samples, seed, ...)
    OUT/NAME.parts/KEY.json        one finished batch: {"manifest": sha256 of the manifest, "sha256": of the
                                   payload, "payload": ...}

Every file is written under a temporary name, fsynced and renamed, so a crash or a full disk never leaves
a partial file under a real name. Without `resume` a run refuses to touch earlier results unless
`overwrite`; with it, parts of the same run are reused and a damaged one (bad checksum, truncated,
another run's) is reported with its path and recomputed. SIGINT/SIGTERM inside `open_run` release the
lock and raise `Interrupted`, whose message says how to resume. Shards of a job array (`sweep --shard I/N`)
write parts side by side under their own locks (`NAME.shard-I-of-N.lock`) and share the manifest; the
result is assembled under NAME.lock (`sweep --merge`, or the shard that finds every part present).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import signal
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator

from sift_jax.errors import ConfigError

__all__ = ["Interrupted", "Store", "StoreWarning", "atomic_write", "check_dir", "check_file", "open_run"]

MANIFEST = "manifest.json"


class StoreWarning(UserWarning):
    """A result file was damaged and is recomputed, or a stale lock was taken over (the message names the path).

    Example:
        >>> issubclass(StoreWarning, UserWarning)
        True
    """


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; its finished parts are on disk and the message says how to resume.

    Args:
        signum: the signal number (`signal.SIGINT` or `signal.SIGTERM`).
        message: what was saved and how to finish.

    Example:
        >>> import signal
        >>> err = Interrupted(signal.SIGTERM, "stopped")
        >>> isinstance(err, KeyboardInterrupt), err.signum == signal.SIGTERM, str(err)
        (True, True, 'stopped')
    """

    def __init__(self, signum: int, message: str = "interrupted"):
        super().__init__(message)
        self.signum = signum


def _fail(field: str, path, text: str) -> ConfigError:
    return ConfigError(field, str(path), message=text)


def check_dir(path, field: str = "out") -> pathlib.Path:
    """The output directory `path`, created if missing; refused unless it is a writable directory.

    Args:
        path: directory path (str or PathLike; "" is refused rather than read as the current directory).
        field: the option named in the error (e.g. "out").

    Returns:
        The directory as a `pathlib.Path`.

    Raises:
        ConfigError: empty path, an existing file, a directory that cannot be created or written.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     check_dir(pathlib.Path(d) / "new" / "results").is_dir()
        True
        >>> check_dir("")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: out = '' is invalid: allowed is a directory path (not empty)
    """
    if not str(path).strip():
        raise ConfigError(field, str(path), "a directory path (not empty)")
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise _fail(field, path, f"--{field} {path} is a file, not a directory: choose a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _fail(field, path, f"--{field} {path} is not a writable directory ({err.strerror or err})") from None
    return path


def check_file(path, field: str = "out") -> pathlib.Path:
    """A file to write: not empty, not a directory, in an existing writable directory.

    Args:
        path: the file path (str or PathLike).
        field: the option named in the error.

    Returns:
        The path as a `pathlib.Path` (nothing is created).

    Raises:
        ConfigError: empty path, an existing directory, a missing or unwritable parent directory.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     check_file(os.path.join(d, "fig.png")).name
        'fig.png'
        >>> check_file("no/such/dir/fig.png")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: --out no/such/dir/fig.png: its directory no/such/dir does not exist
    """
    if not str(path).strip():
        raise ConfigError(field, str(path), "a file path (not empty)")
    path = pathlib.Path(path)
    if path.is_dir():
        raise _fail(field, path, f"--{field} {path} is a directory: give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise _fail(field, path, f"--{field} {path}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _fail(field, path, f"--{field} {path}: its directory {parent} is not writable")
    return path


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _tmp_name(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path, data: bytes | Callable[[pathlib.Path], None]) -> None:
    """Write `path` whole or not at all: a temporary file in the same directory, fsync, then rename.

    Args:
        path: the file to (re)place.
        data: the bytes, or a function that writes a given path (e.g. `lambda p: ds.to_netcdf(p)`).

    Raises:
        ConfigError: the write failed (disk full, read-only, ...); the old file is left untouched and the
            temporary one removed.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = pathlib.Path(d) / "a.json"
        ...     atomic_write(p, b"[1]")
        ...     p.read_bytes(), sorted(f.name for f in pathlib.Path(d).iterdir())
        (b'[1]', ['a.json'])
    """
    path = pathlib.Path(path)
    tmp = _tmp_name(path)
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _fail("out", path, f"cannot write {path} ({err.strerror or err}); it was left as it was") from None
        raise
    _fsync_dir(path.parent)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The files of one run NAME in OUT (see the module docstring); create it with `open_run`.

    Args:
        out: the output directory (already checked, see `check_dir`).
        name: the run's name (file stem).
        lock_name: the lock file's stem (default `name`; a shard of a job array locks `NAME.shard-I-of-N`,
            so shards write parts side by side while NAME.lock guards the result).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     st = Store(d, "demo")
        ...     st.check_manifest({"samples": 16}, resume=False, overwrite=False)
        ...     st.save("topk__0", [1.5, None])
        ...     st.load("topk__0"), st.missing(["topk__0", "topk__2"])
        ([1.5, None], ['topk__2'])
    """

    def __init__(self, out, name: str, lock_name: str | None = None):
        self.dir = pathlib.Path(out)
        self.name = name
        self.nc = self.dir / f"{name}.nc"
        self.parts = self.dir / f"{name}.parts"
        self.lock_path = self.dir / f"{lock_name or name}.lock"
        self.manifest: dict | None = None

    # ------------------------------------------------------------------------------------------- lock

    def lock(self) -> None:
        """Take `NAME.lock` (pid, host, start time); refuse while a live run holds it, take over a dead one's."""
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%F %T")})
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale_lock()
                continue
            except OSError as err:
                raise _fail("out", self.lock_path, f"cannot create {self.lock_path} ({err.strerror})") from None
            with os.fdopen(fd, "w") as f:
                f.write(info)
                f.flush()
                os.fsync(f.fileno())
            return
        raise _fail("out", self.lock_path, f"{self.lock_path}: another run keeps taking this lock")

    def _take_over_stale_lock(self) -> None:
        try:
            held = json.loads(self.lock_path.read_text())
            pid, host = int(held["pid"]), str(held["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            raise _fail(
                "out",
                self.lock_path,
                f"{self.dir / self.name} is locked by {self.lock_path}, which cannot be "
                f"read; if no run is writing {self.name} there, delete it",
            ) from None
        if host != socket.gethostname() or _alive(pid):
            raise _fail(
                "out",
                self.lock_path,
                f"{self.dir / self.name} is being written by another run (pid {pid} on "
                f"{host}, since {held.get('started')}; lock {self.lock_path}): wait for it or choose another "
                f"--out (delete the lock only if that run is gone)",
            )
        claimed = self.lock_path.with_name(f".{self.lock_path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.lock_path, claimed)  # atomic: of two runs taking over, one wins
        except FileNotFoundError:
            return
        claimed.unlink(missing_ok=True)
        warnings.warn(
            f"{self.lock_path}: took over the lock of pid {pid}, which is no longer running", StoreWarning, stacklevel=2
        )

    def unlock(self) -> None:
        """Remove `NAME.lock` if this process holds it."""
        try:
            if json.loads(self.lock_path.read_text()).get("pid") == os.getpid():
                self.lock_path.unlink()
        except (OSError, ValueError):
            pass

    # --------------------------------------------------------------------------------------- manifest

    def _part_files(self) -> list[pathlib.Path]:
        return sorted(p for p in self.parts.glob("*.json") if p.name != MANIFEST) if self.parts.is_dir() else []

    def read_manifest(self) -> dict | None:
        """The saved manifest (None if there is none).

        Raises:
            ConfigError: manifest.json is unreadable or not a JSON object (names its path).
        """
        path = self.parts / MANIFEST
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
            why = None if isinstance(doc, dict) else "not a JSON object"
        except (OSError, ValueError) as err:
            why = f"{type(err).__name__}: {err}"
        if why:
            raise _fail(
                "resume",
                path,
                f"{path} is damaged ({why}): the parts beside it cannot be checked; "
                f"rerun with --overwrite to start again",
            )
        return doc

    def check_manifest(self, manifest: dict, resume: bool, overwrite: bool) -> None:
        """Make the parts directory hold this run's `manifest`, or refuse (nothing is deleted unasked).

        Without `resume`: earlier results (NAME.nc or parts) are refused unless `overwrite`, which
        deletes the part files. With `resume`: the saved manifest must equal `manifest` (its parts are
        then reused); a finished NAME.nc with no parts is refused (nothing to resume).

        Args:
            manifest: JSON-ready description of the run (what makes two runs' parts interchangeable).
            resume: reuse the parts of the same run. overwrite: replace earlier results.

        Raises:
            ConfigError: refused as above, a damaged manifest, or missing manifest beside part files.
        """
        if resume and overwrite:
            raise ConfigError(
                "overwrite", True, "not with resume (--resume keeps the earlier parts, --overwrite discards them)"
            )
        if self.parts.exists() and not self.parts.is_dir():
            raise _fail("out", self.parts, f"{self.parts} is a file, not a parts directory: move it away")
        old = self.read_manifest()
        if resume and old is not None:
            diff = [k for k in sorted(set(manifest) | set(old)) if old.get(k) != manifest.get(k)]
            if diff:
                raise ConfigError(
                    "resume",
                    str(self.parts),
                    f"parts written with the same {', '.join(diff)}; "
                    f"they differ (spec, samples, seed, quick mode or code changed): use --overwrite",
                )
        elif resume and self._part_files():
            raise _fail(
                "resume",
                self.parts,
                f"{self.parts / MANIFEST} is missing, so the parts in {self.parts} "
                f"cannot be checked against this run: rerun with --overwrite to discard them",
            )
        elif resume and self.nc.exists():
            raise _fail(
                "resume",
                self.nc,
                f"nothing to resume: {self.nc} is a finished result without parts; "
                f"rerun with --overwrite to replace it",
            )
        elif not resume:
            earlier = [str(p) for p, there in ((self.nc, self.nc.exists()), (self.parts, self._part_files())) if there]
            if earlier and not overwrite:
                raise _fail(
                    "out",
                    self.dir,
                    f"{' and '.join(earlier)} already hold results: pass --resume to finish "
                    f"that run, --overwrite to replace it, or choose another --out",
                )
            for p in self._part_files() + [self.parts / MANIFEST]:
                p.unlink(missing_ok=True)
        self._remove_dead_tmp_files()
        self.parts.mkdir(parents=True, exist_ok=True)
        if old is None or not resume:
            atomic_write(self.parts / MANIFEST, json.dumps(manifest, sort_keys=True).encode())
        self.manifest = manifest

    def _remove_dead_tmp_files(self) -> None:
        for p in list(self.parts.glob(".*.tmp")) + list(self.dir.glob(f".{self.name}.*.tmp")):
            pid = p.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                p.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ parts

    def part_path(self, key: str) -> pathlib.Path:
        """The file of part `key` (letters, digits, '_', '-')."""
        return self.parts / f"{key}.json"

    def save(self, key: str, payload) -> None:
        """Write part `key` atomically with the manifest's and its own sha256.

        Args:
            key: part name. payload: JSON-ready data (lists, dicts, floats, None).
        """
        doc = {"manifest": _digest(self.manifest), "sha256": _digest(payload), "payload": payload}
        atomic_write(self.part_path(key), json.dumps(doc).encode())

    def load(self, key: str, decode: Callable = lambda x: x):
        """Part `key`, decoded, or None when missing or damaged (a `StoreWarning` names the damaged file).

        Args:
            key: part name. decode: payload -> value; its KeyError/TypeError/ValueError mark the part damaged.
        """
        path = self.part_path(key)
        try:
            doc = json.loads(path.read_bytes())
            why = (
                "written by another run"
                if doc["manifest"] != _digest(self.manifest)
                else "checksum mismatch"
                if doc["sha256"] != _digest(doc["payload"])
                else None
            )
            value = None if why else decode(doc["payload"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:  # truncated, empty, garbage, wrong layout
            why, value = f"unreadable: {type(err).__name__}: {err}", None
        if why:
            warnings.warn(f"{path}: damaged part ({why}); recomputing it", StoreWarning, stacklevel=2)
        return value

    def missing(self, keys) -> list[str]:
        """The keys among `keys` with no part file (damaged ones are found by `load`)."""
        return [k for k in keys if not self.part_path(k).exists()]

    def write_result(self, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
        """Write NAME.nc atomically through `write(path)` (e.g. `ds.to_netcdf`); returns its path."""
        atomic_write(self.nc, write)
        return self.nc


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Inside: SIGTERM raises `Interrupted` like SIGINT raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        del frame
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def open_run(
    out, name: str, manifest: dict, resume: bool = False, overwrite: bool = False, lock_name: str | None = None
) -> Iterator[Store]:
    """Check OUT, lock NAME there, check the manifest (`Store.check_manifest`); unlock on leaving.

    SIGINT or SIGTERM inside leave the finished parts in place and raise `Interrupted` saying how to resume.

    Args:
        out: output directory (created if missing). name: the run's name.
        manifest: JSON-ready description of the run. resume, overwrite: see `Store.check_manifest`.
        lock_name: the lock's stem (`Store`; default `name`).

    Yields:
        The locked `Store`.

    Raises:
        ConfigError: a bad directory, a live lock, or refused earlier results. Interrupted: on a signal.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with open_run(d, "demo", {"samples": 16}) as st:
        ...         st.save("topk__0", [1.0])
        ...         locked = st.lock_path.exists()
        ...     with open_run(d, "demo", {"samples": 16}, resume=True) as again:
        ...         reused = again.load("topk__0")
        ...     locked, st.lock_path.exists(), reused
        (True, False, [1.0])
    """
    store = Store(check_dir(out), name, lock_name)
    store.lock()
    try:
        with _sigterm_raises():
            store.check_manifest(manifest, resume, overwrite)
            yield store
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        saved = len(store._part_files())
        raise Interrupted(
            signum,
            f"interrupted by {signal.Signals(signum).name}: {saved} finished part(s) kept "
            f"in {store.parts}; to finish, run the same sweep with --resume and without --overwrite "
            f"(Python: resume=True)",
        ) from None
    finally:
        store.unlock()
