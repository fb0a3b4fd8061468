"""Sweeps: spec validation, one compile per static group, sharding, resume after SIGKILL, reproduce."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import xarray as xr

import sift_jax as sj
from sift_jax import montecarlo
from sift_jax import sweep as sweeps
from sift_jax.simulate import TaskMetrics

ROOT = pathlib.Path(__file__).resolve().parent.parent

BASE = """
name = "t"
preset = "mixtral-8x7b"
curves = ["topk"]
samples = 300
seed = 2
chunk_size = 128
points_per_call = 2
[fixed]
n_tokens = 1
n_layers = 2
"""


def _spec(extra):
    return sweeps.load_spec(BASE + textwrap.dedent(extra))


@pytest.mark.parametrize(
    "extra,key",
    [
        ('colour = 1\n[[axes]]\nfield = "eta"\nvalues = [1.0]', "colour"),
        ('[[axes]]\nfield = "eta"\nvalues = []', "axes[0].values"),
        ('[[axes]]\nfield = "wavelength"\nvalues = [1.0]', "axes[0].field"),
        ('[[axes]]\nfield = "eta"\nvalues = ["a"]', "axes[0].values"),
        ('[[axes]]\nfield = "eta"\nvalues = [-1.0]', "eta"),
        ('mode = "spiral"\n[[axes]]\nfield = "eta"\nvalues = [1.0]', "mode"),
    ],
)
def test_spec_validation_names_the_key(extra, key):
    with pytest.raises(sj.ConfigError) as err:
        _spec(extra)
    assert key in str(err.value)


def test_unknown_policy_and_missing_axes():
    with pytest.raises(sj.ConfigError, match="policy"):
        sweeps.load_spec(BASE.replace('["topk"]', '["greedy"]') + '[[axes]]\nfield = "eta"\nvalues = [1.0]')
    with pytest.raises(sj.ConfigError, match="axes"):
        sweeps.load_spec(BASE)
    with pytest.raises(sj.ConfigError, match="preset"):
        sweeps.load_spec(BASE.replace("mixtral-8x7b", "llama") + '[[axes]]\nfield = "eta"\nvalues = [1.0]')


def test_two_static_groups_compile_exactly_twice_and_match_simulate():
    spec = _spec(
        '[[axes]]\nfield = "top_k"\nvalues = [1, 2]\n[[axes]]\nfield = "bandwidth_hz"\nvalues = [1e6, 2e6, 3e6]'
    )
    jax.clear_caches()
    before = montecarlo.TRACES["count"]
    ds = sweeps.run(spec, out=None)
    assert montecarlo.TRACES["count"] - before == 2  # (top_k=1) and (top_k=2), 3 points each
    assert ds["energy_per_token_j_mean"].dims == ("curve", "top_k", "bandwidth_hz")
    # each point equals the same scenario run alone through simulate (same seed => same samples)
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=2, top_k=2, bandwidth_hz=2e6)
    alone = sj.simulate(sc, policy="topk", samples=300, seed=2, chunk_size=128).metrics["energy_per_token_j"]
    got = ds.sel(curve="topk", top_k=2, bandwidth_hz=2e6)
    assert float(got["energy_per_token_j_mean"]) == pytest.approx(alone.mean, rel=1e-6)
    assert int(got["energy_per_token_j_n"]) == alone.n


def test_only_axis_fields_carry_the_point_axis_and_results_match_simulate():
    spec = _spec('[[axes]]\nfield = "output_norm"\nvalues = [2.0, 8.0]')
    scs = [sweeps.scenario_of(spec, p, quick=False) for p in spec.points()]
    (stacked, tables), axes = sweeps.point_params(scs, {"output_norm"})
    assert stacked.output_norm.shape == (2,) and np.ndim(stacked.eta) == 0 and tables.shape[0] == 2
    assert axes.count(0) == 2 and len(axes) == len(jax.tree.leaves((stacked, tables)))
    (_, shared), axes_bw = sweeps.point_params(scs, {"bandwidth_hz"})
    assert shared.ndim == 3 and axes_bw.count(0) == 1  # tables computed once when no table field varies
    with pytest.raises(sj.ConfigError, match="axes"):
        montecarlo.run(lambda k, p: {}, (stacked, tables), 2, 8, axes=(None,) * len(axes))
    ds = sweeps.run(spec, out=None)
    for norm in (2.0, 8.0):  # the table (and so the deviation bound) differs per point
        alone = sj.simulate(scs[0].replace(output_norm=norm), policy="topk", samples=300, seed=2, chunk_size=128)
        got = ds.sel(curve="topk", output_norm=norm)
        for metric in ("energy_per_token_j", "deviation_bound"):
            assert float(got[f"{metric}_mean"]) == pytest.approx(alone.metrics[metric].mean, rel=1e-6)


def test_point_axes_all_shares_one_program_across_swept_fields():
    """point_axes="all" stacks every dynamic field: a spec sweeping eta and one sweeping the bandwidth
    compile one program between them, and agree with the default ("swept") to float rounding."""
    siftmoe = BASE.replace('curves = ["topk"]', 'curves = ["siftmoe"]')
    by_eta = sweeps.load_spec(
        siftmoe.replace("n_layers = 2", "n_layers = 2\nbandwidth_hz = 2e6")
        + '[[axes]]\nfield = "eta"\nvalues = [0.0, 2.5]\n'
    )
    by_bw = sweeps.load_spec(
        siftmoe.replace("n_layers = 2", "n_layers = 2\neta = 1.5")
        + '[[axes]]\nfield = "bandwidth_hz"\nvalues = [1.8e6, 2.2e6]\n'
    )
    jax.clear_caches()
    before = montecarlo.TRACES["count"]
    shared_eta = sweeps.run(by_eta, out=None, point_axes="all")
    shared_bw = sweeps.run(by_bw, out=None, point_axes="all")
    assert montecarlo.TRACES["count"] - before == 1
    assert shared_eta.attrs["point_axes"] == "all"
    for spec, shared in ((by_eta, shared_eta), (by_bw, shared_bw)):
        alone = sweeps.run(spec, out=None)  # default: only the swept field carries the point axis
        assert alone.attrs["point_axes"] == "swept"
        for metric in ("energy_per_token_j", "deviation_bound", "infeasible_rate", "latency_s"):
            np.testing.assert_array_equal(shared[f"{metric}_n"].values, alone[f"{metric}_n"].values)
            np.testing.assert_allclose(
                shared[f"{metric}_mean"].values, alone[f"{metric}_mean"].values, rtol=1e-6, atol=1e-12
            )
    assert montecarlo.TRACES["count"] - before == 3  # one more program per swept field
    with pytest.raises(sj.ConfigError, match="point_axes"):
        sweeps.run(by_eta, out=None, point_axes="some")


def test_fast_fading_bit_loadings_of_one_policy_share_one_program_and_match_simulate(tmp_path):
    """Under fast fading the curves of one policy run as one program (one selection, each bit loading on
    it): three curves compile two programs, and every curve equals simulate with its own bit loading."""
    spec = sweeps.load_spec(
        textwrap.dedent("""
        name = "ff"
        preset = "switch-base-8"
        fading = "fast"
        curves = ["siftmoe:dynamic", "topk:uniform", "siftmoe:uniform"]
        samples = 48
        seed = 5
        points_per_call = 2
        [fixed]
        n_tokens = 6
        n_layers = 2
        [[axes]]
        field = "bandwidth_hz"
        values = [0.9e6, 1.2e6]
        """)
    )
    assert [[c.label for c in g] for g in sweeps.curve_groups(spec)] == [
        ["siftmoe:dynamic", "siftmoe:uniform"],
        ["topk:uniform"],
    ]
    jax.clear_caches()
    before = montecarlo.TRACES["count"]
    ds = sweeps.run(spec, out=tmp_path)
    assert montecarlo.TRACES["count"] - before == 2
    assert sorted(p.name for p in (tmp_path / "ff.parts").glob("*__0.json")) == [
        "siftmoe_dynamic--siftmoe_uniform__0.json",
        "siftmoe_dynamic__0.json",
        "siftmoe_uniform__0.json",
        "topk_uniform__0.json",
    ]
    base = sj.presets.get("switch-base-8").replace(n_tokens=6, n_layers=2)
    for label in ("siftmoe:dynamic", "siftmoe:uniform", "topk:uniform"):
        policy, bits = label.split(":")
        alone = sj.simulate(
            base.replace(bandwidth_hz=1.2e6), policy=policy, samples=48, seed=5, fading="fast", bits=bits
        ).metrics
        got = ds.sel(curve=label, bandwidth_hz=1.2e6)
        for metric in sj.METRICS:
            assert float(got[f"{metric}_mean"]) == pytest.approx(alone[metric].mean, rel=1e-6, abs=1e-12), metric
            assert int(got[f"{metric}_n"]) == alone[metric].n
    dyn, uni = (ds["energy_per_token_j_mean"].sel(curve=c) for c in ("siftmoe:dynamic", "siftmoe:uniform"))
    assert bool((dyn < uni).all())  # the group keeps the curves apart: Thm. 3 saves energy on the same selection
    # the paired difference Dynamic - Uniform, against NumPy on per-sample values of each bit loading alone
    assert ds["pair"].values.tolist() == ["siftmoe:dynamic|siftmoe:uniform"]
    sc = base.replace(bandwidth_hz=1.2e6)
    params = jax.tree.map(lambda x: np.asarray(x)[None], (sc, sj.similarity.synthetic_tables(sc)))
    idx = jax.numpy.arange(48, dtype=jax.numpy.uint32)
    (e_dyn, ok_dyn), (e_uni, ok_uni) = (
        jax.device_get(
            montecarlo.raw_metrics(TaskMetrics("siftmoe", "fast", bits), None, params, idx, 5)["energy_per_token_j"]
        )
        for bits in ("dynamic", "uniform")
    )
    both = ok_dyn[0] & ok_uni[0]
    diff = np.asarray(e_dyn[0], np.float64)[both] - np.asarray(e_uni[0], np.float64)[both]
    half = 1.959963984540054 * diff.std(ddof=1) / np.sqrt(diff.size)
    got = ds.sel(pair="siftmoe:dynamic|siftmoe:uniform", bandwidth_hz=1.2e6)
    assert int(got["energy_diff_j_n"]) == diff.size
    assert float(got["energy_diff_j_mean"]) == pytest.approx(diff.mean(), rel=1e-5)
    assert float(got["energy_diff_j_ci_hi"]) == pytest.approx(diff.mean() + half, rel=1e-5)
    assert float(got["energy_diff_j_ci_hi"]) < 0  # paired: Dynamic below Uniform on the same samples


def test_eta_axis_takes_the_staircase_and_matches_simulate():
    """Five eta points in one call (the SiftMoE candidates ranked once per sample, policies/staircase.py)
    give exactly what each eta gives alone through simulate."""
    etas = [0.0, 0.4, 0.8, 1.5, 2.5]
    spec = sweeps.load_spec(
        BASE.replace('curves = ["topk"]', 'curves = ["siftmoe"]').replace("points_per_call = 2", "points_per_call = 5")
        + f'[[axes]]\nfield = "eta"\nvalues = {etas}\n'
    )
    ds = sweeps.run(spec, out=None)
    base = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=2)
    energies = []
    for eta in etas:
        alone = sj.simulate(base.replace(eta=eta), policy="siftmoe", samples=300, seed=2, chunk_size=128).metrics
        got = ds.sel(curve="siftmoe", eta=eta)
        for metric in ("energy_per_token_j", "deviation_bound", "infeasible_rate", "latency_s"):
            assert float(got[f"{metric}_mean"]) == pytest.approx(alone[metric].mean, rel=1e-6, abs=1e-12)
            assert int(got[f"{metric}_n"]) == alone[metric].n
        energies.append(alone["energy_per_token_j"].mean)
    assert energies[-1] < energies[0]  # the axis matters: a larger budget saves energy


def test_dataset_attrs_and_netcdf_roundtrip(tmp_path):
    spec = _spec('[[axes]]\nfield = "eta"\nvalues = [0.5, 2.0]')
    ds = sweeps.run(spec, out=tmp_path)
    back = xr.load_dataset(tmp_path / "t.nc")
    for key in (
        "spec",
        "seed",
        "samples",
        "chunk_size",
        "jax",
        "jaxlib",
        "flax",
        "backend",
        "device_count",
        "prng_impl",
        "x64",
        "sift_jax_git",
    ):
        assert key in back.attrs
    np.testing.assert_array_equal(back["energy_per_token_j_mean"].values, ds["energy_per_token_j_mean"].values)


def _run_sweep_process(spec_path, out, resume, env=None):
    code = f"import sys; from sift_jax import sweep; sweep.run({str(spec_path)!r}, out={str(out)!r}, resume={resume})"
    return subprocess.Popen([sys.executable, "-c", code], env=env or os.environ.copy())


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """kill -9 at random moments (after 1-5 finished parts, plus a random 0-0.3 s, so a kill may land while a
    part is being written), then --resume: the dataset equals an uninterrupted run's. 3 trials here;
    SIFT_JAX_KILL_TRIALS=10 runs more."""
    # enough samples that each part takes ~0.3 s
    text = BASE.replace("samples = 300", "samples = 100000").replace("points_per_call = 2", "points_per_call = 1")
    text += '[[axes]]\nfield = "bandwidth_hz"\nvalues = [1e6, 1.5e6, 2e6, 2.5e6, 3e6, 3.5e6]\n'
    spec_path = tmp_path / "t.toml"
    spec_path.write_text(text)
    full = sweeps.run(sweeps.load_spec(spec_path), out=tmp_path / "clean")
    rng = np.random.default_rng(int(time.time()))  # random moments; each trial's draw is in the failure message
    for trial in range(int(os.environ.get("SIFT_JAX_KILL_TRIALS", "3"))):
        after, extra = int(rng.integers(1, 6)), float(rng.uniform(0.0, 0.3))
        out = tmp_path / f"killed{trial}"
        proc = _run_sweep_process(spec_path, out, False)
        parts = out / "t.parts"
        deadline = time.time() + 300
        while time.time() < deadline and len(list(parts.glob("topk__*.json"))) < after and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(extra)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(list(parts.glob("topk__*.json")))
        assert _run_sweep_process(spec_path, out, True).wait() == 0, (trial, after, extra)
        resumed = xr.load_dataset(out / "t.nc")
        assert sorted(p.name for p in parts.glob("topk__*.json")) == [f"topk__{i}.json" for i in range(6)]
        for var in full.data_vars:
            np.testing.assert_array_equal(
                resumed[var].values,
                full[var].values,
                err_msg=f"trial {trial}: killed after {after} parts + {extra:.2f} s ({done_before} on disk)",
            )


def test_resume_refuses_changed_spec(tmp_path):
    spec = _spec('[[axes]]\nfield = "eta"\nvalues = [0.5]')
    sweeps.run(spec, out=tmp_path)
    changed = _spec('[[axes]]\nfield = "eta"\nvalues = [0.5]').text.replace("seed = 2", "seed = 3")
    with pytest.raises(sj.ConfigError, match="resume"):
        sweeps.run(sweeps.load_spec(changed), out=tmp_path, resume=True)


def test_sharded_over_four_cpu_devices_equals_one_device(tmp_path):
    """Default 'dispatch' sharding is bit-identical; 'shard_map' (the multi-host path) equal to rounding."""
    code = textwrap.dedent("""
        import json, sys, jax
        import sift_jax as sj
        from sift_jax import sweep
        spec = sweep.load_spec(sys.argv[1])
        ds = sweep.run(spec, out=None)
        sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=2, eta=0.5)
        tables = sj.similarity.synthetic_tables(sc)
        params = jax.tree.map(lambda x: jax.numpy.asarray(x)[None], (sc, tables))
        from sift_jax.simulate import TaskMetrics
        (sm,) = sj.montecarlo.run(TaskMetrics("topk"), params, 1, 300, 2, 128, sharding="shard_map")
        print(json.dumps({"devices": jax.device_count(), "mean": ds["energy_per_token_j_mean"].values.tolist(),
                          "p99": ds["energy_per_token_j_p99"].values.tolist(),
                          "shard_map": sm["energy_per_token_j"].mean}))
    """)
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(BASE + '[[axes]]\nfield = "eta"\nvalues = [0.5, 2.0]\n')
    outs = []
    for n in (1, 4):
        env = os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        res = subprocess.run(
            [sys.executable, "-c", code, str(spec_path)], env=env, capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(__import__("json").loads(res.stdout.strip().splitlines()[-1]))
    assert outs[0]["devices"] == 1 and outs[1]["devices"] == 4
    assert outs[0]["mean"] == outs[1]["mean"] and outs[0]["p99"] == outs[1]["p99"]
    assert outs[1]["shard_map"] == pytest.approx(outs[0]["mean"][0][0], rel=1e-6)


def test_every_paper_spec_exists_and_validates():
    from sift_jax.reproduce import PAPER_SPECS, QUICK_SKIPS, default_spec_dir

    for name in PAPER_SPECS:
        spec = sweeps.load_spec(default_spec_dir() / f"{name}.toml")
        assert spec.name == name and len(spec.points()) >= 4
        for point in spec.points():
            quick = sweeps.scenario_of(spec, point, quick=True)
            if name not in QUICK_SKIPS:  # quick mode never changes the regime: the same scenario, fewer samples
                assert quick == sweeps.scenario_of(spec, point, quick=False), name


@pytest.mark.xdist_group("reproduce")
def test_reproduce_quick_writes_expected_files(tmp_path):
    # the whole `sift-jax reproduce --quick` (every paper spec but GPT-OSS's, and the MoE lab), as `make run` does it
    from sift_jax.reproduce import PAPER_SPECS, QUICK_SKIPS, reproduce

    report = reproduce(out=tmp_path, quick=True, echo=None)
    text = report.read_text()
    assert not any((tmp_path / f"{name}.nc").exists() for name in QUICK_SKIPS)
    assert "## Energy breakdown" in text and (tmp_path / "claims.json").exists()
    for name in (n for n in PAPER_SPECS if n not in QUICK_SKIPS):
        spec = sweeps.load_spec(ROOT / "sweeps" / f"{name}.toml")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name
        ds = xr.load_dataset(tmp_path / f"{name}.nc")
        assert int(ds.attrs["quick"]) == 1 and ds.attrs["point_axes"] == "all"
        assert list(ds["curve"].values) == [c.label for c in spec.curves]
        counted = ds["energy_per_token_j_n"].values + ds["energy_per_token_j_n_invalid"].values
        assert (counted == spec.quick_samples).all(), name
        assert f"![{name}]({name}.png)" in text
    assert "Quick mode" in text and "| figure | claim |" in text and "## Flax MoE lab" in text
    lab_figures = re.findall(r"!\[[^\]]*\]\((moe_lab/[^)]+)\)", text)
    assert lab_figures and all((tmp_path / f).stat().st_size > 1000 for f in lab_figures)
    assert (tmp_path / "moe_lab" / "summary.json").exists()


# ------------------------------------------------------------------ results on disk (issue 20, items 3, 5, 7)

TINY = """
name = "tiny"
preset = "mixtral-8x7b"
curves = ["topk"]
samples = 16
seed = 4
points_per_call = 1
[fixed]
n_tokens = 1
n_layers = 1
[[axes]]
field = "eta"
values = [0.5, 1.0, 1.5, 2.0]
"""


def _assert_same_data(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for var in a.data_vars:
        np.testing.assert_array_equal(a[var].values, b[var].values)


@pytest.fixture(scope="module")
def tiny_clean(tmp_path_factory):
    """The uninterrupted run of TINY, written to its own directory."""
    return sweeps.run(sweeps.load_spec(TINY), out=tmp_path_factory.mktemp("clean"))


def test_rerun_into_the_same_out_is_refused_unless_overwrite(tmp_path, tiny_clean):
    """Old code: a second run silently replaced tiny.nc (and a concurrent one loaded the other's parts)."""
    spec = sweeps.load_spec(TINY)
    sweeps.run(spec, out=tmp_path)
    before = (tmp_path / "tiny.nc").read_bytes()
    with pytest.raises(sj.ConfigError, match="--overwrite"):
        sweeps.run(spec, out=tmp_path, samples=32)
    assert (tmp_path / "tiny.nc").read_bytes() == before
    ds = sweeps.run(spec, out=tmp_path, samples=32, overwrite=True)
    counted = ds["energy_per_token_j_n"].values + ds["energy_per_token_j_n_invalid"].values
    assert ds.attrs["samples"] == 32 and (counted == 32).all()  # no part of the 16-sample run mixed in
    again = sweeps.run(spec, out=tmp_path, samples=32, resume=True)  # resuming a finished run: same result
    _assert_same_data(again, ds)


def test_a_second_writer_is_refused_while_a_live_process_holds_the_lock(tmp_path):
    """Old code: two writers on one --out deleted and loaded each other's parts."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "tiny.lock").write_text(
            __import__("json").dumps({"pid": holder.pid, "host": __import__("socket").gethostname(), "started": "now"})
        )
        with pytest.raises(sj.ConfigError, match=f"pid {holder.pid}"):
            sweeps.run(sweeps.load_spec(TINY), out=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "tiny.nc").exists() and not (tmp_path / "tiny.parts").exists()


def test_resume_recomputes_damaged_parts_and_equals_the_clean_run(tmp_path, tiny_clean):
    """Old code: a truncated, empty or garbage part (or a corrupt manifest) gave a JSONDecodeError/KeyError
    traceback, and an edited part was loaded as data."""
    spec = sweeps.load_spec(TINY)
    sweeps.run(spec, out=tmp_path)
    parts = sorted((tmp_path / "tiny.parts").glob("topk__*.json"))
    assert len(parts) == 4
    text = parts[3].read_text()
    parts[0].write_text(text[: len(text) // 2])
    parts[1].write_text("")
    parts[2].write_bytes(b"\x00\xffgarbage")
    parts[3].write_text(text.replace('"n": 16', '"n": 15', 1))
    with pytest.warns(sj.store.StoreWarning) as record:
        resumed = sweeps.run(spec, out=tmp_path, resume=True)
    assert sorted(str(p) for p in parts) == sorted(str(w.message).split(": damaged")[0] for w in record)
    _assert_same_data(resumed, tiny_clean)
    _assert_same_data(xr.load_dataset(tmp_path / "tiny.nc"), tiny_clean)


def test_resume_with_a_corrupt_or_missing_manifest_is_refused_and_keeps_the_parts(tmp_path):
    spec = sweeps.load_spec(TINY)
    sweeps.run(spec, out=tmp_path)
    manifest = tmp_path / "tiny.parts" / "manifest.json"
    manifest.write_text('{"spec_sha256": ')
    with pytest.raises(sj.ConfigError, match=re.escape(str(manifest))):
        sweeps.run(spec, out=tmp_path, resume=True)
    manifest.unlink()  # old code: every finished part silently deleted
    with pytest.raises(sj.ConfigError, match="--overwrite"):
        sweeps.run(spec, out=tmp_path, resume=True)
    assert len(list((tmp_path / "tiny.parts").glob("topk__*.json"))) == 4


@pytest.mark.parametrize("out", ["", "a-file", "/proc/sift-jax-test"])
def test_bad_out_is_a_config_error(tmp_path, out):
    """Old code: out="" wrote ./tiny.nc, a file or /proc/x gave tracebacks."""
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(sj.ConfigError) as err:
        sweeps.run(sweeps.load_spec(TINY), out=tmp_path / out if out == "a-file" else out)
    assert err.value.field == "out"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_a_clean_batch_and_resume_equals_the_clean_run(tmp_path, tiny_clean, signum):
    spec = sweeps.load_spec(TINY)

    def progress(done, total):
        del total
        if done > 16:  # inside the second batch: the first is saved, the second is abandoned
            os.kill(os.getpid(), signum)

    with pytest.raises(sj.store.Interrupted) as err:
        sweeps.run(spec, out=tmp_path, progress=progress)
    assert err.value.signum == signum and "--resume" in str(err.value)
    assert not (tmp_path / "tiny.lock").exists() and not (tmp_path / "tiny.nc").exists()
    assert 1 <= len(list((tmp_path / "tiny.parts").glob("topk__*.json"))) < 4
    _assert_same_data(sweeps.run(spec, out=tmp_path, resume=True), tiny_clean)


def test_sigterm_to_the_cli_prints_how_to_resume_and_exits_143(tmp_path):
    """The `sift-jax sweep` process, held after its first part: SIGTERM gives one line and status 128 + 15."""
    spec_path = tmp_path / "tiny.toml"
    spec_path.write_text(TINY)
    code = (
        "import time; from sift_jax import store; save = store.Store.save\n"
        "def slow(self, key, payload):\n    save(self, key, payload); time.sleep(60)\n"
        "store.Store.save = slow\nfrom sift_jax.cli import main; main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "sweep", str(spec_path), "--out", str(tmp_path / "r")],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "r" / "tiny.parts").glob("topk__*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and "--resume" in lines[0] and "SIGTERM" in lines[0]
    assert not (tmp_path / "r" / "tiny.lock").exists()
