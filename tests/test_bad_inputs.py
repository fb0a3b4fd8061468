"""Bad input at every entry point gives one clear ConfigError line naming the field (exit status 2 on the
command line), never a traceback or a NaN: a table of bad CLI flags, spec keys, files and API arguments."""

import math

import numpy as np
import pytest

import sift_jax as sj
from sift_jax import sweep as sweeps
from sift_jax.cli import main

SIM = ["simulate", "--preset", "mixtral-8x7b", "--n-layers", "1", "--n-tokens", "1", "--samples", "4", "--quiet"]

CLI_CASES = [  # (id, argv, field named in the message)
    ("eta-text", SIM + ["--eta", "abc"], "eta"),
    ("eta-nan", SIM + ["--eta", "nan"], "eta"),
    ("eta-negative", SIM + ["--eta", "-1"], "eta"),
    ("deadline-zero", SIM + ["--deadline-s", "0"], "deadline_s"),
    ("deadline-inf", SIM + ["--deadline-s", "inf"], "deadline_s"),
    ("bandwidth-negative", SIM + ["--bandwidth-hz", "-5"], "bandwidth_hz"),
    ("bandwidth-wrong-count", SIM + ["--bandwidth-hz", "1e6,2e6"], "bandwidth_hz"),
    ("n-nodes-one", SIM + ["--n-nodes", "1"], "n_nodes"),
    ("n-nodes-fraction", SIM + ["--n-nodes", "2.5"], "n_nodes"),
    ("n-nodes-huge", SIM + ["--n-nodes", "99999999999999999999"], "n_nodes"),
    ("top-k-above-n", SIM + ["--top-k", "99"], "top_k"),
    ("samples-zero", SIM + ["--samples", "0"], "samples"),
    ("samples-negative", SIM + ["--samples", "-3"], "samples"),
    ("samples-overflow", SIM + ["--samples", "99999999999999999999"], "samples"),
    ("seed-negative", SIM + ["--seed", "-1"], "seed"),
    ("seed-overflow", SIM + ["--seed", "99999999999999999999"], "seed"),
    ("chunk-zero", SIM + ["--chunk-size", "0"], "chunk_size"),
    ("policy-unknown", SIM + ["--policy", "nope"], "policy"),
    ("policy-no-prefill", SIM[:-5] + ["--n-tokens", "4", "--samples", "4", "--quiet", "--policy", "wdmoe"], "policy"),
    ("preset-unknown", ["simulate", "--preset", "nope", "--quiet"], "preset"),
    ("regime-unknown", SIM + ["--regime", "medium"], "regime"),
    ("bits-under-slow", SIM + ["--bits", "dp"], "bits"),
    ("bits-unknown", SIM + ["--regime", "fast", "--bits", "nope"], "bits"),
    ("fading-family-unknown", SIM + ["--fading-family", "weibull"], "fading"),
    ("fading-shape-huge", SIM + ["--fading-shape", "100"], "fading_shape"),
    ("cosine-above-one", SIM + ["--intra-cluster-cosine", "2"], "intra_cluster_cosine"),
    ("distances-swapped", SIM + ["--min-distance-m", "100", "--max-distance-m", "10"], "min_distance_m"),
    ("table-missing", SIM + ["--table", "/nonexistent/table.npy"], "tables"),
    ("plugin-missing", ["--plugin", "no_such_module_xyz"] + SIM, "plugin"),
    ("shard-bad", ["sweep", "SPEC", "--shard", "3/2"], "shard"),
    ("reproduce-specs-missing", ["reproduce", "--specs", "/nonexistent/specs", "--quick"], "specs"),
]

SPEC = (
    'name = "t"\npreset = "mixtral-8x7b"\ncurves = ["siftmoe"]\nsamples = 4\n[fixed]\nn_tokens = 1\nn_layers = 1\n'
    '[[axes]]\nfield = "eta"\nvalues = [1.0]\n'
)

SPEC_CASES = [  # (id, spec text, field)
    ("name-with-slash", SPEC.replace('name = "t"', 'name = "a/b"'), "name"),
    ("name-dotdot", SPEC.replace('name = "t"', 'name = ".."'), "name"),
    ("unknown-key", "colour = 1\n" + SPEC, "colour"),
    ("samples-zero", SPEC.replace("samples = 4", "samples = 0"), "samples"),
    ("samples-text", SPEC.replace("samples = 4", 'samples = "many"'), "samples"),
    ("samples-float", SPEC.replace("samples = 4", "samples = 4.5"), "samples"),
    ("seed-negative", SPEC.replace("samples = 4", "samples = 4\nseed = -1"), "seed"),
    ("preset-unknown", SPEC.replace('preset = "mixtral-8x7b"', 'preset = "nope"'), "preset"),
    ("curves-empty", SPEC.replace('curves = ["siftmoe"]', "curves = []"), "curves"),
    ("curve-unknown", SPEC.replace('curves = ["siftmoe"]', 'curves = ["nope"]'), "policy"),
    ("regime-unknown", 'regime = "medium"\n' + SPEC, "regime"),
    ("axis-field-unknown", SPEC.replace('field = "eta"', 'field = "nope"'), "field"),
    ("axis-values-empty", SPEC.replace("values = [1.0]", "values = []"), "values"),
    ("axis-value-nan", SPEC.replace("values = [1.0]", "values = [nan]"), "eta"),
    ("fixed-negative", SPEC.replace("n_layers = 1", "n_layers = 1\ndeadline_s = -1.0"), "deadline_s"),
    ("points-per-call-zero", SPEC.replace("samples = 4", "samples = 4\npoints_per_call = 0"), "points_per_call"),
    ("not-toml", "this is = = not toml", "spec"),
    ("option-unknown", SPEC.replace("[fixed]", "[options]\ncolour = 1\n[fixed]"), "colour"),
]


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, field", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_flags(argv, field, capsys, tmp_path):
    argv = [str(tmp_path / "t.toml") if a == "SPEC" else a for a in argv]
    (tmp_path / "t.toml").write_text(SPEC)
    err = _cli_error(argv, capsys)
    assert f"{field} = " in err, err


@pytest.mark.parametrize("text, field", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_spec_keys(text, field, capsys, tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    err = _cli_error(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert f"{field} = " in err, err


def test_files_of_the_wrong_kind(capsys, tmp_path):
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(SPEC.replace("t", "\xe9").encode("latin-1"))
    assert "spec = " in _cli_error(["sweep", str(latin), "--quiet"], capsys)
    text = tmp_path / "table.npy"
    text.write_text("not an array")
    assert "tables = " in _cli_error(SIM + ["--table", str(text)], capsys)
    not_nc = tmp_path / "x.nc"
    not_nc.write_text("not netcdf")
    assert "file = " in _cli_error(["plot", str(not_nc)], capsys)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    spec = tmp_path / "t.toml"
    spec.write_text(SPEC)
    assert "--out " in _cli_error(["sweep", str(spec), "--out", str(a_file), "--quiet"], capsys)
    assert "spec = " in _cli_error(["sweep", str(tmp_path / "missing.toml"), "--quiet"], capsys)


API_CASES = [  # (id, call, field)
    ("samples-zero", lambda sc: sj.simulate(sc, samples=0), "samples"),
    ("samples-float", lambda sc: sj.simulate(sc, samples=2.5), "samples"),
    ("seed-huge", lambda sc: sj.simulate(sc, samples=4, seed=2**40), "seed"),
    ("policy-not-str", lambda sc: sj.simulate(sc, policy=3, samples=4), "policy"),
    ("option-unknown", lambda sc: sj.simulate(sc, samples=4, colour=1), "colour"),
    ("table-nan", lambda sc: sj.simulate(sc, samples=4, table=np.full((8, 9), np.nan)), "table"),
    ("table-shape", lambda sc: sj.simulate(sc, samples=4, table=np.ones((3, 3))), "table"),
    ("field-unknown", lambda sc: sc.replace(nope=1), "nope"),
    ("field-nan", lambda sc: sc.replace(eta=math.nan), "eta"),
    ("field-string", lambda sc: sc.replace(deadline_s="fast"), "deadline_s"),
    ("field-bool", lambda sc: sc.replace(n_layers=True), "n_layers"),
    ("regime-both", lambda sc: sj.simulate(sc, samples=4, regime="fast", fading="slow"), "fading"),
    ("point-axes", lambda sc: sweeps.run(sweeps.load_spec(SPEC), out=None, point_axes="x"), "point_axes"),
]


@pytest.mark.parametrize("call, field", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_python_api(call, field):
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
    with pytest.raises(sj.ConfigError) as err:
        call(sc)
    assert err.value.field == field, str(err.value)


def test_the_table_has_at_least_forty_bad_inputs():
    assert len(CLI_CASES) + len(SPEC_CASES) + 5 + len(API_CASES) >= 40
