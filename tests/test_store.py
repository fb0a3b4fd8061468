"""Results on disk (sift_jax.store): output checks, lock, manifest, checksummed parts, atomic writes, signals."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from sift_jax import store
from sift_jax.errors import ConfigError

MANIFEST = {"spec_sha256": "abc", "samples": 16, "seed": 0}


def _finished_run(out, keys=("topk__0", "topk__1")):
    with store.open_run(out, "t", MANIFEST) as st:
        for i, key in enumerate(keys):
            st.save(key, [{"mean": 0.5 + i, "ci95": [0.4, 0.6], "n": 16}])
        st.write_result(lambda p: p.write_bytes(b"netcdf"))
    return st


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("bad", ["", "   ", "/proc/sift-jax-test/x"])
def test_check_dir_refuses_empty_and_uncreatable_paths(bad):
    with pytest.raises(ConfigError) as err:
        store.check_dir(bad)
    assert err.value.field == "out"


def test_check_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        store.check_dir(tmp_path / "f")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_check_dir_refuses_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="not a writable directory"):
            store.check_dir(ro)
    finally:
        ro.chmod(0o755)


def test_check_file_refuses_directories_and_missing_parents(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        store.check_file(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        store.check_file(tmp_path / "missing" / "x.png")
    assert store.check_file(tmp_path / "x.png") == tmp_path / "x.png"


# ------------------------------------------------------------------------------------- atomic writes


def test_disk_full_never_replaces_a_good_file(tmp_path, monkeypatch):
    good = tmp_path / "part.json"
    store.atomic_write(good, b"good")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(ConfigError, match="No space left"):
        store.atomic_write(good, b"partial")
    with pytest.raises(ConfigError, match=str(good)):
        store.atomic_write(good, lambda p: p.write_bytes(b"partial"))
    assert good.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.json"]  # no temporary file left behind


def test_interrupted_write_leaves_no_temporary_file(tmp_path):
    def interrupted(path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.atomic_write(tmp_path / "a.nc", interrupted)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- lock


def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    with store.open_run(tmp_path, "t", MANIFEST) as st:
        assert json.loads(st.lock_path.read_text())["pid"] == os.getpid()
        with (
            pytest.raises(ConfigError, match=f"pid {os.getpid()}"),
            store.open_run(tmp_path, "t", MANIFEST, resume=True),
        ):
            pass
        assert st.lock_path.exists()  # the refused writer left the first one's lock alone
    assert not st.lock_path.exists()


def test_lock_is_released_after_an_error(tmp_path):
    with pytest.raises(RuntimeError), store.open_run(tmp_path, "t", MANIFEST):
        raise RuntimeError("boom")
    assert not (tmp_path / "t.lock").exists()


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path):
    lock = tmp_path / "t.lock"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename, "started": "then"}))
    with pytest.warns(store.StoreWarning, match="no longer running"), store.open_run(tmp_path, "t", MANIFEST) as st:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        st.save("topk__0", [1.0])
    assert not lock.exists()


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"pid": 1, "host": "elsewhere", "started": "x"})])
def test_unreadable_or_foreign_lock_is_refused(tmp_path, content):
    (tmp_path / "t.lock").write_text(content)
    with pytest.raises(ConfigError, match=r"t.lock"), store.open_run(tmp_path, "t", MANIFEST):
        pass
    assert (tmp_path / "t.lock").read_text() == content


# ----------------------------------------------------------------------------------- earlier results


def test_earlier_results_are_refused_without_resume_or_overwrite(tmp_path):
    st = _finished_run(tmp_path)
    with pytest.raises(ConfigError, match="--overwrite"), store.open_run(tmp_path, "t", MANIFEST | {"samples": 32}):
        pass
    assert st.nc.read_bytes() == b"netcdf" and len(list(st.parts.glob("topk__*.json"))) == 2
    with store.open_run(tmp_path, "t", MANIFEST | {"samples": 32}, overwrite=True) as again:
        assert again.missing(["topk__0", "topk__1"]) == ["topk__0", "topk__1"]  # never loaded, deleted
    with (
        pytest.raises(ConfigError, match="overwrite"),
        store.open_run(tmp_path, "t", MANIFEST, resume=True, overwrite=True),
    ):
        pass


def test_resume_reuses_parts_of_the_same_run_only(tmp_path):
    _finished_run(tmp_path)
    with store.open_run(tmp_path, "t", MANIFEST, resume=True) as st:
        assert st.load("topk__1")[0]["mean"] == 1.5
    with (
        pytest.raises(ConfigError, match="samples"),
        store.open_run(tmp_path, "t", MANIFEST | {"samples": 32}, resume=True),
    ):
        pass


def test_resume_with_nothing_to_resume_refuses_to_replace_a_result(tmp_path):
    (tmp_path / "t.nc").write_bytes(b"old")
    with pytest.raises(ConfigError, match="nothing to resume"), store.open_run(tmp_path, "t", MANIFEST, resume=True):
        pass
    with store.open_run(tmp_path / "fresh", "t", MANIFEST, resume=True) as st:  # nothing there: a fresh run
        assert st.missing(["topk__0"]) == ["topk__0"]


@pytest.mark.parametrize("text", ["", "{trunc", "[1, 2]", "\x00\xff garbage"])
def test_damaged_manifest_is_a_config_error_naming_it(tmp_path, text):
    st = _finished_run(tmp_path)
    (st.parts / "manifest.json").write_text(text)
    with (
        pytest.raises(ConfigError, match=r"manifest.json is damaged"),
        store.open_run(tmp_path, "t", MANIFEST, resume=True),
    ):
        pass


def test_missing_manifest_never_deletes_the_parts(tmp_path):
    st = _finished_run(tmp_path)
    (st.parts / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="--overwrite"), store.open_run(tmp_path, "t", MANIFEST, resume=True):
        pass
    assert len(list(st.parts.glob("topk__*.json"))) == 2


# ---------------------------------------------------------------------------------------------- parts


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "edit", "other-run", "layout"])
def test_damaged_part_is_reported_by_path_and_treated_as_missing(tmp_path, damage):
    st = _finished_run(tmp_path)
    path = st.part_path("topk__0")
    text = path.read_text()
    other = json.loads(text) | {"manifest": "0" * 64}
    path.write_text(
        {
            "truncate": text[: len(text) // 2],
            "empty": "",
            "garbage": "\x00\x01nonsense",
            "edit": text.replace("0.5", "0.25"),
            "other-run": json.dumps(other),
            "layout": json.dumps([1, 2]),
        }[damage]
    )
    with store.open_run(tmp_path, "t", MANIFEST, resume=True) as again:
        with pytest.warns(store.StoreWarning, match=str(path)):
            assert again.load("topk__0") is None
        assert again.load("topk__1")[0]["mean"] == 1.5


def test_a_decode_error_marks_the_part_damaged(tmp_path):
    _finished_run(tmp_path)
    with store.open_run(tmp_path, "t", MANIFEST, resume=True) as st, pytest.warns(store.StoreWarning, match="KeyError"):
        assert st.load("topk__0", lambda payload: payload[0]["no such key"]) is None


def test_temporary_files_of_dead_writers_are_cleaned_on_resume(tmp_path):
    st = _finished_run(tmp_path)
    dead, live = st.parts / f".topk__2.json.{_dead_pid()}.tmp", st.parts / f".topk__3.json.{os.getpid()}.tmp"
    dead.write_text("half")
    live.write_text("half")
    with store.open_run(tmp_path, "t", MANIFEST, resume=True):
        pass
    assert not dead.exists() and live.exists()


# -------------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_keeps_finished_parts_releases_the_lock_and_says_how_to_resume(tmp_path, signum):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(store.Interrupted) as err, store.open_run(tmp_path, "t", MANIFEST) as st:
        st.save("topk__0", [1.0])
        os.kill(os.getpid(), signum)
        st.save("topk__1", [2.0])  # not reached
    assert err.value.signum == signum and "--resume" in str(err.value) and "1 finished part" in str(err.value)
    assert not st.lock_path.exists() and st.missing(["topk__0", "topk__1"]) == ["topk__1"]
    assert signal.getsignal(signal.SIGTERM) is before
