"""`sweep --shard I/N` and `--merge`: shards of a job array write parts into one OUT; the merged dataset
equals a single run's, and a merge with parts missing is refused with what is missing."""

import textwrap

import pytest
import xarray as xr

import sift_jax as sj
from sift_jax import sweep as sweeps
from sift_jax.cli import main

SPEC = textwrap.dedent("""
    name = "sharded"
    preset = "mixtral-8x7b"
    curves = ["siftmoe", "topk"]
    samples = 16
    seed = 3
    points_per_call = 1
    [fixed]
    n_tokens = 1
    n_layers = 1
    [[axes]]
    field = "eta"
    values = [0.0, 1.5, 3.0]
    """)


def test_three_shards_then_the_last_one_assembles_what_one_run_gives(tmp_path):
    spec = sweeps.load_spec(SPEC)
    alone = sweeps.run(spec, out=tmp_path / "alone")
    shared = tmp_path / "shared"
    assert sweeps.run(spec, out=shared, shard=(0, 3)) is None  # 6 batches: 0 and 3 here
    with pytest.raises(sj.ConfigError, match="4 of 6 missing"):
        sweeps.run(spec, out=shared, merge=True)
    assert sweeps.run(spec, out=shared, shard=(2, 3)) is None
    last = sweeps.run(spec, out=shared, shard=(1, 3))  # completes the set: writes sharded.nc
    assert last is not None and (shared / "sharded.nc").exists()
    xr.testing.assert_equal(last, alone)
    on_disk = xr.load_dataset(shared / "sharded.nc")
    xr.testing.assert_equal(on_disk, xr.load_dataset(tmp_path / "alone" / "sharded.nc"))
    xr.testing.assert_equal(sweeps.run(spec, out=shared, merge=True), alone)  # --merge rewrites the same result
    assert sorted(p.name for p in shared.glob("*.lock")) == []  # every lock released


def test_shard_arguments_are_checked(tmp_path):
    spec = sweeps.load_spec(SPEC)
    for bad in ((3, 3), (-1, 2), (0, 0), ("0", 2), (0, 2, 1)):
        with pytest.raises(sj.ConfigError, match="shard"):
            sweeps.run(spec, out=tmp_path, shard=bad)
    with pytest.raises(sj.ConfigError, match="overwrite"):
        sweeps.run(spec, out=tmp_path, shard=(0, 2), overwrite=True)
    with pytest.raises(sj.ConfigError, match="out"):
        sweeps.run(spec, out=None, shard=(0, 2))
    with pytest.raises(sj.ConfigError, match="merge"):
        sweeps.run(spec, out=tmp_path, shard=(0, 2), merge=True)
    # a shard of another run (other samples) finds the shared manifest and refuses
    sweeps.run(spec, out=tmp_path / "x", shard=(0, 2))
    with pytest.raises(sj.ConfigError, match="samples"):
        sweeps.run(spec, out=tmp_path / "x", shard=(1, 2), samples=8)


def test_cli_shard_and_merge(tmp_path, capsys):
    path = tmp_path / "sharded.toml"
    path.write_text(SPEC)
    out = tmp_path / "out"
    main(["sweep", str(path), "--out", str(out), "--shard", "0/2", "--quiet"])
    assert "parts written" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--out", str(out), "--merge", "--quiet"])
    assert exit_info.value.code == 2 and "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--out", str(out), "--shard", "2/2"])
    assert exit_info.value.code == 2 and "shard = '2/2'" in capsys.readouterr().err
    main(["sweep", str(path), "--out", str(out), "--shard", "1/2", "--quiet"])
    assert "wrote" in capsys.readouterr().out and (out / "sharded.nc").exists() and (out / "sharded.png").exists()
