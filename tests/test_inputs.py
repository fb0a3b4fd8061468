"""Real inputs in simulate, sweeps and the CLI: table files and router logs, validated against the scenario,
hashed into the provenance, and a changed file refused on --resume."""

import json
import textwrap

import numpy as np
import pytest

import sift_jax as sj
from sift_jax import checkpoints, inputs
from sift_jax import sweep as sweeps
from sift_jax.cli import main


def _decode_scenario():
    return sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=2, eta=1.5)


def test_a_table_with_one_very_similar_pair_raises_the_replace_rate(tmp_path):
    """Experts 3 and 4 made near-interchangeable (mismatch 1% of the synthetic one): SiftMoE can now serve
    one on the other's node at almost no deviation, so it replaces more slots (same samples, separated CIs)
    and pays no more energy (a superset of allowed decisions on every sample)."""
    sc = _decode_scenario()
    base = np.asarray(sj.similarity.synthetic_tables(sc), np.float64)
    close = base.copy()
    close[:, 3, 4] *= 0.01
    close[:, 4, 3] *= 0.01
    path = tmp_path / "close.npy"
    np.save(path, close)
    before = sj.simulate(sc, samples=1024, seed=4, table=base).metrics
    after = sj.simulate(sc, samples=1024, seed=4, table=str(path))
    assert after.info["table_file"] == str(path) and after.info["table_sha256"] == inputs.file_sha256(path)
    lo_after, hi_before = after.metrics["replace_rate"].ci95[0], before["replace_rate"].ci95[1]
    assert lo_after > hi_before, (after.metrics["replace_rate"], before["replace_rate"])
    assert after.metrics["energy_per_token_j"].mean <= before["energy_per_token_j"].mean * (1 + 1e-6)
    # the same array given in memory gives the same numbers
    assert sj.simulate(sc, samples=1024, seed=4, table=close).metrics == after.metrics


def test_calibration_npz_feeds_tables_and_router(tmp_path):
    sc = _decode_scenario().replace(n_tokens=3)
    L, N, T = sc.n_layers, sc.n_nodes, 7
    result = {
        "tables": np.asarray(sj.similarity.synthetic_tables(sc)),
        "beta_max": np.ones(L),
        "router_logits": np.random.default_rng(0).normal(size=(L, T, N)).astype(np.float32),
        **{k: np.ones((L, N)) for k in ("b_max", "beta_fd", "beta_pi")},
        "layout": "mixtral",
        "checkpoint": "ckpt",
        "checkpoint_files": {},
        "hidden_states": "drawn",
        "layer_names": ("a", "b"),
        "settings": {},
        "model_config": {},
    }
    path = checkpoints.save_calibration(tmp_path / "cal.npz", result)
    res = sj.simulate(sc, policy="topk", samples=16, seed=0, table=str(path), router=str(path))
    assert res.info["router"] == "log" and res.info["router_sha256"] == res.info["table_sha256"]
    with pytest.raises(sj.ConfigError, match="router"):
        sj.simulate(sc.replace(n_tokens=8), policy="topk", samples=4, router=str(path))  # T = 7 < M = 8
    with pytest.raises(sj.ConfigError, match="table"):
        sj.simulate(sc.replace(n_layers=3), policy="topk", samples=4, table=str(path))  # L = 2 in the file


def test_router_log_replaces_the_synthetic_router():
    """A log in which every token's router prefers expert 0 (the user's own, K = 1): practical Top-1 then
    never uses the radio, an independent fact; the synthetic router does."""
    sc = sj.presets.get("switch-base-8").replace(n_tokens=4, n_layers=2)
    logits = np.zeros((sc.n_layers, 10, sc.n_nodes), np.float32)
    logits[..., 0] = 8.0
    own = sj.simulate(sc, policy="topk", samples=32, seed=1, router=logits).metrics
    synthetic = sj.simulate(sc, policy="topk", samples=32, seed=1).metrics
    assert own["uplink_energy_j"].max == 0.0 and synthetic["uplink_energy_j"].mean > 0.0
    g, topk = inputs.draw_router(__import__("jax").random.key(0), inputs.check_router(sc, logits), sc)
    assert np.all(np.asarray(topk) == 0) and np.allclose(np.asarray(g), 1.0)


def test_spec_keys_resolve_next_to_the_spec_and_resume_refuses_a_changed_file(tmp_path):
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
    tables = np.asarray(sj.similarity.synthetic_tables(sc))
    np.save(tmp_path / "t.npy", tables)
    np.save(tmp_path / "r.npy", np.random.default_rng(1).normal(size=(1, 5, 8)).astype(np.float32))
    spec_path = tmp_path / "real.toml"
    spec_path.write_text(
        textwrap.dedent("""
        name = "real"
        preset = "mixtral-8x7b"
        curves = ["siftmoe", "topk"]
        samples = 16
        tables = "t.npy"
        router = "r.npy"
        [fixed]
        n_tokens = 1
        n_layers = 1
        [[axes]]
        field = "eta"
        values = [0.0, 1.5]
        """)
    )
    spec = sweeps.load_spec(spec_path)
    assert spec.tables == str(tmp_path / "t.npy") and spec.router == str(tmp_path / "r.npy")
    ds = sweeps.run(spec, out=tmp_path / "out")
    assert ds.attrs["tables_sha256"] == inputs.file_sha256(tmp_path / "t.npy") and ds.attrs["router_file"].endswith(
        "r.npy"
    )
    # the sweep's point equals simulate with the same files (same samples)
    alone = sj.simulate(
        sc.replace(eta=1.5),
        policy="topk",
        samples=16,
        seed=0,
        table=str(tmp_path / "t.npy"),
        router=str(tmp_path / "r.npy"),
    ).metrics
    assert float(ds["energy_per_token_j_mean"].sel(curve="topk", eta=1.5)) == pytest.approx(
        alone["energy_per_token_j"].mean, rel=1e-6
    )
    np.save(tmp_path / "t.npy", tables * 2)  # the file changes under the run's parts
    with pytest.raises(sj.ConfigError, match="tables_sha256"):
        sweeps.run(spec, out=tmp_path / "out", resume=True)
    bad = (
        spec_path.read_text()
        .replace("values = [0.0, 1.5]", "values = [1.0, 2.0]")
        .replace('field = "eta"', 'field = "output_norm"')
    )
    spec_path.write_text(bad)
    with pytest.raises(sj.ConfigError, match="synthetic-table field"):
        sweeps.load_spec(spec_path)


def test_cli_router_and_table_options(tmp_path, capsys):
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
    np.save(tmp_path / "t.npy", np.asarray(sj.similarity.synthetic_tables(sc)))
    np.save(tmp_path / "r.npy", np.zeros((1, 4, 8), np.float32))
    main(
        [
            "simulate",
            "--preset",
            "mixtral-8x7b",
            "--n-tokens",
            "1",
            "--n-layers",
            "1",
            "--samples",
            "8",
            "--json",
            "--quiet",
            "--table",
            str(tmp_path / "t.npy"),
            "--router",
            str(tmp_path / "r.npy"),
        ]
    )
    info = json.loads(capsys.readouterr().out)["info"]
    assert info["router"] == "log" and len(info["table_sha256"]) == 64
    with pytest.raises(SystemExit):
        main(
            [
                "simulate",
                "--preset",
                "mixtral-8x7b",
                "--n-tokens",
                "1",
                "--n-layers",
                "1",
                "--samples",
                "8",
                "--quiet",
                "--router",
                str(tmp_path / "t.npy"),
            ]
        )  # a table is not a router log: N+1 columns
    assert "router = " in capsys.readouterr().err


def test_a_paper_spec_runs_end_to_end_on_real_inputs(tmp_path, capsys):
    """sweeps/fig5a.toml (switch-base-8, prefill of 384 tokens in 12 layers) with `tables` and `router`
    lines added, through `sift-jax sweep`: the dataset records both files and their hashes."""
    import pathlib

    import xarray as xr

    root = pathlib.Path(__file__).resolve().parent.parent
    sc = sj.presets.get("switch-base-8")
    rng = np.random.default_rng(5)
    np.save(tmp_path / "tables.npy", np.asarray(sj.similarity.synthetic_tables(sc)) * rng.uniform(0.5, 1.5))
    np.save(tmp_path / "router.npy", rng.normal(size=(sc.n_layers, sc.n_tokens + 16, sc.n_nodes)).astype(np.float32))
    spec = tmp_path / "fig5a.toml"
    spec.write_text('tables = "tables.npy"\nrouter = "router.npy"\n' + (root / "sweeps" / "fig5a.toml").read_text())
    main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--samples", "4", "--quiet"])
    assert "wrote" in capsys.readouterr().out
    ds = xr.load_dataset(tmp_path / "out" / "fig5a.nc")
    assert ds.attrs["router_sha256"] == inputs.file_sha256(tmp_path / "router.npy")
    assert ds.attrs["tables_sha256"] == inputs.file_sha256(tmp_path / "tables.npy")
    assert bool((ds["energy_per_token_j_n"] + ds["energy_per_token_j_n_invalid"] == 4).all())
