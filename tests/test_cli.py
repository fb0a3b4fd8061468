"""The `sift-jax` command: JSON output, overrides, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from sift_jax.cli import main


def _run(args):
    return subprocess.run(
        [sys.executable, "-c", "from sift_jax.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_simulate_json_schema(capsys):
    main(
        [
            "simulate",
            "--preset",
            "mixtral-8x7b",
            "--policy",
            "topk",
            "--samples",
            "64",
            "--n-tokens",
            "1",
            "--n-layers",
            "2",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "mixtral-8x7b" and out["policy"] == "topk" and out["samples"] == 64
    assert set(out["metrics"]) == {
        "energy_per_token_j",
        "uplink_energy_j",
        "local_energy_j",
        "deviation_bound",
        "replace_rate",
        "skip_rate",
        "infeasible_rate",
        "latency_s",
    }
    parts = out["metrics"]["uplink_energy_j"]["mean"] + out["metrics"]["local_energy_j"]["mean"]
    assert (
        abs(parts - out["metrics"]["energy_per_token_j"]["mean"]) <= 1e-6 * out["metrics"]["energy_per_token_j"]["mean"]
    )
    for stat in out["metrics"].values():
        assert {"mean", "ci95", "n", "p50", "p90", "p99"} <= set(stat)
    assert out["provenance"]["jax"]


@pytest.mark.parametrize(
    "args,field",
    [
        (["--bandwidth-hz", "-2e6"], "bandwidth_hz"),
        (["--eta", "nan"], "eta"),
        (["--top-k", "9"], "top_k"),
        (["--n-nodes", "x"], "n_nodes"),
        (["--preset", "nope"], "preset"),
        (["--policy", "greedy"], "policy"),
        (["--samples", "0"], "samples"),
        (["--fading", "slowish"], "regime"),  # --fading is the former name of --regime
        (["--fading-family", "weibull"], "fading"),
    ],
)
def test_bad_input_one_line_exit_2(args, field):
    res = _run(["simulate", "--samples", "8", "--n-tokens", "1", "--n-layers", "1", *args])
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in res.stderr


def test_per_helper_override_list(capsys):
    """A per-helper list reaches the scenario: against the same run at 1 MHz for every helper (same seed, so
    the same draws and, for Top-K, the same experts), raising some helpers' bandwidth strictly lowers the
    uplink energy (eq. 10 decreases in B) and leaves the user's own expert energy unchanged. Top-K is a
    baseline and every task is feasible at 1 MHz, so all 16 tasks count in every metric."""

    def run(bandwidth):
        main(
            [
                "simulate",
                "--preset",
                "switch-base-8",
                "--policy",
                "topk",
                "--samples",
                "16",
                "--n-tokens",
                "1",
                "--n-layers",
                "1",
                "--bandwidth-hz",
                bandwidth,
                "--json",
            ]
        )
        return json.loads(capsys.readouterr().out)["metrics"]

    listed, uniform = run("1e6,1e6,1e6,2e6,2e6,2e6,3e6"), run("1e6")
    assert uniform["infeasible_rate"]["mean"] == 0.0
    for m in (listed, uniform):
        assert all(stat["n"] == 16 and stat["n_invalid"] == 0 for stat in m.values())
    assert listed["uplink_energy_j"]["mean"] < uniform["uplink_energy_j"]["mean"]
    assert listed["local_energy_j"]["mean"] == uniform["local_energy_j"]["mean"]


def test_fit_paper_refuses_an_unknown_model_in_one_line():
    res = _run(["fit-paper", "--model", "gpt-5"])
    assert res.returncode == 2 and "model" in res.stderr and "switch-base-8" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------- paths and files a new user tries (issue 20, items 3 and 5)

TINY = (
    'name = "tiny"\npreset = "mixtral-8x7b"\ncurves = ["topk"]\nsamples = 16\npoints_per_call = 2\n'
    'fixed = {n_tokens = 1, n_layers = 1}\naxes = [{field = "eta", values = [0.5, 1.5]}]\n'
)


def _cli(args, capsys):
    """(exit status, stdout, stderr) of `sift-jax ARGS` run in this process."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]


def _sweep_result(path, **attrs):
    import xarray as xr

    ds = xr.Dataset(
        {
            f"energy_per_token_j_{k}": (("curve", "eta"), [[1.0 + d, 0.5 + d]])
            for k, d in (("mean", 0.0), ("ci_lo", -0.1), ("ci_hi", 0.1))
        },
        coords={"curve": ["topk"], "eta": [0.5, 1.5]},
        attrs={"title": "demo", **attrs},
    )
    ds.to_netcdf(path)
    return path


@pytest.fixture
def spec_path(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("out", ["", "a-file", "/proc/sift-jax-test"])
def test_sweep_refuses_a_bad_out_in_one_line(tmp_path, spec_path, capsys, out):
    """Old code: --out "" wrote ./tiny.nc and /tiny.png; a file or /proc/x gave tracebacks."""
    (tmp_path / "a-file").write_text("x")
    code, _, err = _cli(["sweep", spec_path, "--out", tmp_path / out if out == "a-file" else out], capsys)
    _one_line_error(code, err, "out")
    assert not (tmp_path / "tiny.nc").exists()


def test_sweep_refuses_a_non_utf8_spec_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    code, _, err = _cli(["sweep", bad, "--out", tmp_path], capsys)
    _one_line_error(code, err, "spec", "UTF-8")


def test_sweep_again_into_the_same_out_needs_overwrite(tmp_path, spec_path, capsys):
    out = tmp_path / "r"
    assert _cli(["sweep", spec_path, "--out", out, "--quiet"], capsys)[0] == 0
    before = (out / "tiny.nc").read_bytes()
    code, _, err = _cli(["sweep", spec_path, "--out", out, "--samples", "8", "--quiet"], capsys)
    _one_line_error(code, err, "--overwrite", "--resume")
    assert (out / "tiny.nc").read_bytes() == before
    code, stdout, _ = _cli(["sweep", spec_path, "--out", out, "--samples", "8", "--overwrite", "--quiet"], capsys)
    assert code == 0 and f"wrote {out / 'tiny.nc'} and {out / 'tiny.png'}" in stdout


def test_plot_output_paths(tmp_path, capsys):
    """Old code: --out missing/x.png gave a traceback; --out DIR wrote DIR.png and claimed DIR."""
    nc = _sweep_result(tmp_path / "fig.nc")
    code, _, err = _cli(["plot", nc, "--out", tmp_path / "missing" / "x.png"], capsys)
    _one_line_error(code, err, "does not exist")
    (tmp_path / "pngs").mkdir()
    code, out, _ = _cli(["plot", nc, "--out", tmp_path / "pngs"], capsys)
    written = tmp_path / "pngs" / "fig_energy_per_token_j.png"
    assert code == 0 and out.strip() == f"wrote {written}" and written.stat().st_size > 1000
    assert not (tmp_path / "pngs.png").exists()
    code, out, _ = _cli(["plot", nc, "--out", tmp_path / "noext"], capsys)
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'noext.png'}" and (tmp_path / "noext.png").exists()


def test_plot_refuses_files_that_are_not_sweep_results(tmp_path, capsys):
    """Old code: a netCDF without `curve` gave a traceback; an unrelated one said energy_per_token_j was
    invalid and allowed."""
    import xarray as xr

    xr.Dataset({"energy_per_token_j_mean": ("eta", [1.0, 2.0])}, coords={"eta": [0.5, 1.0]}).to_netcdf(
        tmp_path / "nocurve.nc"
    )
    xr.Dataset({"temperature": ("time", [1.0, 2.0])}).to_netcdf(tmp_path / "other.nc")
    for name in ("nocurve.nc", "other.nc"):
        code, _, err = _cli(["plot", tmp_path / name], capsys)
        _one_line_error(code, err, "file", "a sweep result")
    code, _, err = _cli(["plot", _sweep_result(tmp_path / "fig.nc"), "--metric", "skip_rate"], capsys)
    _one_line_error(code, err, "skip_rate", "one of energy_per_token_j")


def test_reproduce_names_a_missing_spec_directory(tmp_path, capsys):
    code, _, err = _cli(["reproduce", "--specs", tmp_path / "nonexistent", "--out", tmp_path / "r"], capsys)
    _one_line_error(code, err, "nonexistent", "an existing directory")
    assert "fig3b" not in err


def test_reproduce_refuses_a_file_as_out(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = _cli(["reproduce", "--out", tmp_path / "f", "--only", "fig5a"], capsys)
    _one_line_error(code, err, "is a file")


def test_oracle_too_large_names_cli_options_not_python_ones(capsys):
    """Old code: the advice was method='fast' or max_work=, options the CLI does not have."""
    code, _, err = _cli(["simulate", "--policy", "oracle", "--samples", "4", "--quiet"], capsys)
    _one_line_error(code, err, "oracle", "--n-tokens")
    assert "method=" not in err and "max_work" not in err


def test_moe_train_checks_out_before_training(tmp_path, capsys, monkeypatch):
    from sift_jax.moe import train as train_lib

    monkeypatch.setattr(train_lib, "train", lambda *a, **k: pytest.fail("trained before checking --out"))
    (tmp_path / "f").write_text("x")
    code, _, err = _cli(["moe", "train", "--tiny", "--out", tmp_path / "f"], capsys)
    _one_line_error(code, err, "is a file")


def test_retraining_removes_the_previous_models_calibration(tmp_path, monkeypatch):
    """Old code: calibration.* of the old model stayed beside the new one, and --table used it silently."""
    from types import SimpleNamespace

    import numpy as np

    from sift_jax import store
    from sift_jax.moe import cli as moe_cli
    from sift_jax.moe import train as train_lib
    from sift_jax.moe.model import tiny_config
    from sift_jax.moe.train import tiny_train_config

    model = SimpleNamespace(cfg=tiny_config())
    monkeypatch.setattr(
        train_lib, "train", lambda *a, **k: SimpleNamespace(summary={"steps": 1}, history={"ce": [1.0]}, model=model)
    )
    monkeypatch.setattr(train_lib, "evaluate", lambda *a, **k: {"loss": 1.0, "accuracy": 0.5})
    monkeypatch.setattr(train_lib, "save_checkpoint", lambda path, *a, **k: path)
    monkeypatch.setattr(moe_cli, "plot_train_curve", lambda *a, **k: None)
    corpus = SimpleNamespace(test=np.zeros(10_000, np.uint8), describe=lambda: {})
    for name in ("calibration.npz", "calibration.json", "calibration_tables.png", "keep.txt"):
        (tmp_path / name).write_text("old model")
    with pytest.warns(store.StoreWarning, match="calibration.npz"):
        moe_cli.do_train(tmp_path, tiny_config(), tiny_train_config(), corpus=corpus)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "train_summary.json"]


# ------------------------------------------------- values the verbs produce, against an independent computation

VALUES = (
    'name = "vals"\npreset = "mixtral-8x7b"\ncurves = ["topk"]\nsamples = 64\nseed = 5\npoints_per_call = 2\n'
    'fixed = {n_tokens = 1, n_layers = 1}\naxes = [{field = "bandwidth_hz", values = [1e6, 3e6]}]\n'
)


def test_sweep_writes_the_means_simulate_gives_each_point(tmp_path, capsys):
    """`sift-jax sweep` of a 2-point spec (with --samples overriding the spec's 64): each point of the netCDF
    equals `sj.simulate` of that point's scenario, built here from the preset, with the spec's seed and the
    same sample count (sample i uses fold_in(key(seed), i) in both), for every metric: counts exactly, means
    and CIs to float32 rounding (the vmapped sweep and the lone run may round the uplink energy apart)."""
    import numpy as np
    import xarray as xr

    import sift_jax as sj

    (tmp_path / "vals.toml").write_text(VALUES)
    code, out, err = _cli(
        ["sweep", tmp_path / "vals.toml", "--out", tmp_path / "r", "--samples", "24", "--quiet"], capsys
    )
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'r' / 'vals.nc'} and {tmp_path / 'r' / 'vals.png'}"
    assert (tmp_path / "r" / "vals.png").read_bytes()[1:4] == b"PNG"
    ds = xr.load_dataset(tmp_path / "r" / "vals.nc")
    assert ds["curve"].values.tolist() == ["topk"] and ds["bandwidth_hz"].values.tolist() == [1e6, 3e6]
    assert int(ds.attrs["seed"]) == 5
    base = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
    energies = []
    for bandwidth in (1e6, 3e6):
        alone = sj.simulate(base.replace(bandwidth_hz=bandwidth), policy="topk", samples=24, seed=5).metrics
        got = ds.sel(curve="topk", bandwidth_hz=bandwidth)
        for metric, stat in alone.items():
            assert int(got[f"{metric}_n"]) == stat.n and int(got[f"{metric}_n_invalid"]) == stat.n_invalid
            assert stat.n + stat.n_invalid == 24
            if stat.mean is None:
                assert np.isnan(float(got[f"{metric}_mean"]))
                continue
            assert float(got[f"{metric}_mean"]) == pytest.approx(stat.mean, rel=1e-6, abs=1e-12), metric
            lo, hi = float(got[f"{metric}_ci_lo"]), float(got[f"{metric}_ci_hi"])
            assert (lo, hi) == pytest.approx(stat.ci95, rel=1e-6, abs=1e-12), metric
        energies.append(alone["uplink_energy_j"].mean)
    assert energies[1] < energies[0]  # the axis reached the model: more bandwidth, less uplink energy (eq. 10)


def test_plot_draws_the_datasets_values(tmp_path, capsys, monkeypatch):
    """`sift-jax plot`: the figure behind the PNG has one line per curve holding the dataset's means against
    the swept bandwidth in MHz (the first value of the second axis), CI bands from ci_lo/ci_hi, the paper's
    curve names, a log y axis when the means span more than a factor 50, and the PNG is 5.2 x 3.8 in at 120 dpi."""
    import struct

    import numpy as np
    import xarray as xr

    from sift_jax import plots

    bw, etas = [1e6, 2e6, 3e6], [0.5, 1.5]
    mean = np.array([[[0.9, 0.8], [0.5, 0.4], [0.3, 0.2]], [[2.0, 1.0], [0.1, 0.05], [0.02, 0.01]]])
    ds = xr.Dataset(
        {
            f"energy_per_token_j_{k}": (("curve", "bandwidth_hz", "eta"), mean * f)
            for k, f in (("mean", 1.0), ("ci_lo", 0.9), ("ci_hi", 1.2))
        },
        coords={"curve": ["siftmoe", "topk"], "bandwidth_hz": bw, "eta": etas},
        attrs={"title": "values"},
    )
    ds.to_netcdf(tmp_path / "v.nc")
    figures = []
    real = plots._figure
    monkeypatch.setattr(plots, "_figure", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1])
    code, out, err = _cli(["plot", tmp_path / "v.nc"], capsys)
    png = tmp_path / "v_energy_per_token_j.png"
    assert code == 0 and out.strip() == f"wrote {png}", err
    head = png.read_bytes()[:24]
    assert head[1:4] == b"PNG" and struct.unpack(">II", head[16:24]) == (624, 456)  # IHDR width, height
    (ax,) = figures[0].axes
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["SiftMoE", "Top-K (practical)"]
    for c, line in enumerate(lines):
        np.testing.assert_allclose(line.get_xdata(), [1.0, 2.0, 3.0])  # MHz
        np.testing.assert_allclose(line.get_ydata(), mean[c, :, 0])  # eta = 0.5, the first value
    bands = [coll for coll in ax.collections if len(coll.get_paths())]
    assert len(bands) == 2
    for c, band in enumerate(bands):
        vertices = band.get_paths()[0].vertices
        for x, lo, hi in zip([1.0, 2.0, 3.0], 0.9 * mean[c, :, 0], 1.2 * mean[c, :, 0]):
            at_x = vertices[np.isclose(vertices[:, 0], x), 1]
            assert np.isclose(at_x.min(), lo) and np.isclose(at_x.max(), hi)
    assert ax.get_yscale() == "log"  # positive means span 0.01 .. 2.0, a factor 200 > 50
    assert ax.get_title() == "values"


def test_bench_quick_prints_a_table_of_consistent_numbers(capsys, monkeypatch):
    """`sift-jax bench --quick --only foundation` (the cheapest benchmark): a markdown table with one row per
    preset, finite positive throughputs, and each ratio column equal to its JAX rate over the NumPy rate
    (to the printed precision). The benchmark loops over `sj.presets.names()`; limited here to the smallest
    preset (a sixth of the time), as the table's format and arithmetic do not depend on the count."""
    import math

    import sift_jax as sj

    monkeypatch.setattr(sj.presets, "names", lambda: ("switch-base-8",))

    code, out, err = _cli(["bench", "--quick", "--only", "foundation"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "## foundation" and any(ln.startswith("Machine: ") for ln in lines)
    table = [ln for ln in lines if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == [
        "preset",
        "L x (N-1)",
        "JAX samples/s",
        "NumPy samples/s",
        "ratio",
        "JAX rbg keys samples/s",
        "ratio",
    ]
    assert set(table[1].replace("|", "")) == {"-"}
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    assert [r[0] for r in rows] == ["switch-base-8"]
    for name, shape, jax_rate, np_rate, ratio, rbg_rate, rbg_ratio in rows:
        sc = sj.presets.get(name)
        assert shape == f"{sc.n_layers} x {sc.n_helpers}"
        jax_rate, np_rate, rbg_rate = float(jax_rate), float(np_rate), float(rbg_rate)
        assert all(math.isfinite(v) and v > 0 for v in (jax_rate, np_rate, rbg_rate))
        # rates print with 3 significant digits (relative error <= 5e-3 each), ratios with one decimal
        for printed, rate in ((ratio, jax_rate), (rbg_ratio, rbg_rate)):
            assert printed.endswith("x")
            assert abs(float(printed[:-1]) - rate / np_rate) <= 0.05 + 0.011 * rate / np_rate, (name, printed)
