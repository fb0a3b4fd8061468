"""The `sift-jax` command: JSON output, overrides, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from sift_jax.cli import main


def _run(args):
    return subprocess.run([sys.executable, "-c", "from sift_jax.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=600)


def test_simulate_json_schema(capsys):
    main(["simulate", "--preset", "mixtral-8x7b", "--policy", "topk", "--samples", "64", "--n-tokens", "1",
          "--n-layers", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "mixtral-8x7b" and out["policy"] == "topk" and out["samples"] == 64
    assert set(out["metrics"]) == {"energy_per_token_j", "uplink_energy_j", "local_energy_j", "deviation_bound",
                                   "replace_rate", "skip_rate", "infeasible_rate", "latency_s"}
    parts = out["metrics"]["uplink_energy_j"]["mean"] + out["metrics"]["local_energy_j"]["mean"]
    assert abs(parts - out["metrics"]["energy_per_token_j"]["mean"]) <= 1e-6 * out["metrics"]["energy_per_token_j"]["mean"]
    for stat in out["metrics"].values():
        assert {"mean", "ci95", "n", "p50", "p90", "p99"} <= set(stat)
    assert out["provenance"]["jax"]


@pytest.mark.parametrize("args,field", [
    (["--bandwidth-hz", "-2e6"], "bandwidth_hz"),
    (["--eta", "nan"], "eta"),
    (["--top-k", "9"], "top_k"),
    (["--n-nodes", "x"], "n_nodes"),
    (["--preset", "nope"], "preset"),
    (["--policy", "greedy"], "policy"),
    (["--samples", "0"], "samples"),
    (["--fading", "slowish"], "fading"),
    (["--fading-family", "weibull"], "fading"),
])
def test_bad_input_one_line_exit_2(args, field):
    res = _run(["simulate", "--samples", "8", "--n-tokens", "1", "--n-layers", "1", *args])
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in res.stderr


def test_per_helper_override_list(capsys):
    main(["simulate", "--preset", "switch-base-8", "--policy", "topk", "--samples", "16", "--n-tokens", "1",
          "--n-layers", "1", "--bandwidth-hz", "1e6,1e6,1e6,2e6,2e6,2e6,3e6", "--json"])
    assert json.loads(capsys.readouterr().out)["metrics"]["energy_per_token_j"]["n"] >= 0


def test_fit_paper_refuses_an_unknown_model_in_one_line():
    res = _run(["fit-paper", "--model", "gpt-5"])
    assert res.returncode == 2 and "model" in res.stderr and "switch-base-8" in res.stderr
    assert "Traceback" not in res.stderr
