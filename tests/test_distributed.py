"""Several processes, one Monte Carlo job: `sift_jax.distributed` (environment parsing, initialisation) and
`montecarlo.run` / `simulate` across two local CPU processes joined by `jax.distributed` (gloo collectives),
compared with a one-process, one-device run."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sift_jax import ConfigError, distributed

WORKER = Path(__file__).with_name("distributed_worker.py")
POLICY, SAMPLES, SEED, CHUNK = "topk", 600, 3, 1  # CHUNK 1 rounds up to a block per device: 2 chunks, 1 padded
DEADLINE_S = 300  # all processes together; the run itself takes ~30-45 s on 2 busy cores
GOOD = {"SIFT_JAX_COORDINATOR": "127.0.0.1:1234", "SIFT_JAX_NUM_PROCESSES": "2", "SIFT_JAX_PROCESS_ID": "1"}


def test_parse_env_reads_the_three_variables_or_none():
    assert distributed.parse_env(GOOD) == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
    assert distributed.parse_env(GOOD | {"SIFT_JAX_INIT_TIMEOUT": "30"})["initialization_timeout"] == 30
    assert distributed.parse_env({**GOOD, "SIFT_JAX_COORDINATOR": "[::1]:80"})["coordinator_address"] == "[::1]:80"
    assert distributed.parse_env({}) == {}
    assert distributed.parse_env({"SLURM_PROCID": "3", "JAX_COORDINATOR_ADDRESS": "h:1"}) == {}  # left to JAX


@pytest.mark.parametrize(
    "name, value",
    [
        ("SIFT_JAX_COORDINATOR", "127.0.0.1"),
        ("SIFT_JAX_COORDINATOR", ":1234"),
        ("SIFT_JAX_COORDINATOR", "h:0"),
        ("SIFT_JAX_COORDINATOR", "h:70000"),
        ("SIFT_JAX_NUM_PROCESSES", "0"),
        ("SIFT_JAX_NUM_PROCESSES", "two"),
        ("SIFT_JAX_PROCESS_ID", "2"),
        ("SIFT_JAX_PROCESS_ID", "-1"),
        ("SIFT_JAX_INIT_TIMEOUT", "0"),
    ],
)
def test_parse_env_names_the_bad_variable(name, value):
    with pytest.raises(ConfigError) as err:
        distributed.parse_env(GOOD | {name: value})
    assert err.value.field == name and repr(value) in str(err.value)


@pytest.mark.parametrize("missing", ["SIFT_JAX_COORDINATOR", "SIFT_JAX_NUM_PROCESSES", "SIFT_JAX_PROCESS_ID"])
def test_parse_env_wants_all_three_variables(missing):
    env = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ConfigError, match=f"{missing} is not set"):
        distributed.parse_env(env)
    with pytest.raises(ConfigError, match="SIFT_JAX_INIT_TIMEOUT"):
        distributed.parse_env({"SIFT_JAX_INIT_TIMEOUT": "10"})


def test_one_process_needs_no_initialisation():
    env = GOOD | {"SIFT_JAX_NUM_PROCESSES": "1", "SIFT_JAX_PROCESS_ID": "0"}
    assert distributed.initialize_from_env(env) == (0, 1)
    assert distributed.initialize_from_env(env) == (0, 1)  # idempotent
    assert distributed.is_writer()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, name: str, env_extra: dict) -> subprocess.Popen:
    """One worker; its output goes to files (no pipe to fill and block on), which the child keeps open."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFT_JAX_", "XLA_FLAGS"))}
    env |= {"JAX_PLATFORMS": "cpu", "SIFT_JAX_INIT_TIMEOUT": "120", **env_extra}  # one CPU device per process
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, str(WORKER), POLICY, str(SAMPLES), str(SEED), str(CHUNK)],
            env=env,
            stdout=out,
            stderr=err,
            cwd=tmp_path,
        )


def _lines(tmp_path: Path, name: str) -> list[dict]:
    text = (tmp_path / f"{name}.out").read_text()  # gloo also prints to stdout: keep the JSON lines
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _close(stat_a: dict, stat_b: dict, rel: float) -> bool:
    """Stat dicts (`Stat.to_dict()`) equal in their counts and flags, and in every float within rel x the
    metric's magnitude (its largest |value|, |mean| or std; tail_share is a fraction: within rel)."""
    scale = max(abs(stat_b["max"] or 0.0), abs(stat_b["mean"] or 0.0), stat_b["std"] or 0.0)
    for field, b in stat_b.items():
        a = stat_a[field]
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True):
            if isinstance(y, float):
                if not (isinstance(x, float) and abs(x - y) <= rel * (1.0 if field == "tail_share" else scale)):
                    return False
            elif x != y:
                return False
    return True


def test_two_processes_equal_one_process(tmp_path):
    """Two CPU processes (1 device each, gloo collectives) run `montecarlo.run` of the top-k metrics on
    Mixtral (1 token, 1 layer; 600 samples in 2 chunks of 512, the last padded) with both shardings, and
    `simulate`; a third process runs the same with one device.

    Both processes print the same statistics, bit for bit, in every mode. Under "dispatch" (each device runs
    the single-device program on its share, the shares are all-gathered) and through `simulate` (which uses
    it) they equal the one-device run bit for bit. Under "shard_map" (one SPMD program over the 2-process
    mesh) XLA:CPU compiles the partitioned program differently: measured on jax 0.10.2, per-sample energies
    differ from one device by 1-2 float32 ulps (rel. <= 2.2e-7) in ~300 of 512 samples (topk and siftmoe
    alike), so the statistics differ by up to 3.7e-8 of their own value (uplink energy's CI, mean and tail
    share), 6e-10 of the metric's magnitude (max(|max|, |mean|, std); 2.6e-9 for tail_share, a fraction);
    asserted within 1e-6 of that magnitude (counts and flags exactly). A histogram quantile could move by
    more if a value sat within 2 ulps of a bin edge: not the case for this seed. The 2-process shard_map
    result was also measured bit-identical to one process with 2 XLA devices.

    Skips only when the job cannot start: a worker dies before it joins (killed by JAX's coordination service,
    or JAX could not create the backend), with the reason.
    """
    t0 = time.perf_counter()
    port = _free_port()
    coordinator = {"SIFT_JAX_COORDINATOR": f"127.0.0.1:{port}", "SIFT_JAX_NUM_PROCESSES": "2"}
    started = []
    try:
        for i in range(2):
            started.append((f"p{i}", _start(tmp_path, f"p{i}", coordinator | {"SIFT_JAX_PROCESS_ID": str(i)})))
        started.append(
            (
                "ref",
                _start(
                    tmp_path,
                    "ref",
                    {"SIFT_JAX_COORDINATOR": "127.0.0.1:1", "SIFT_JAX_NUM_PROCESSES": "1", "SIFT_JAX_PROCESS_ID": "0"},
                ),
            )
        )
        for _, proc in started:
            proc.wait(timeout=max(1.0, DEADLINE_S - (time.perf_counter() - t0)))
    finally:
        for _, proc in started:  # never leave a process behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = {name: _lines(tmp_path, name) for name, _ in started}
    stderr = {name: (tmp_path / f"{name}.err").read_text() for name, _ in started}
    rc = {name: proc.returncode for name, proc in started}
    init_errors = [line["init_error"] for name in lines for line in lines[name] if "init_error" in line]
    crashed = [name for name in rc if rc[name] > 0 and not any("init_error" in line for line in lines[name])]
    if not crashed and any(not any("joined" in line for line in lines[f"p{i}"]) for i in range(2)):
        # no Python error, but a worker never joined: aborted by JAX's coordination service, or no backend
        fatal = [line for name in ("p0", "p1") for line in stderr[name].splitlines() if line.startswith("F")]
        reason = (init_errors or fatal or [stderr["p0"].strip()[-500:]])[0]
        pytest.skip(f"two local jax.distributed CPU processes cannot start here: {reason}")
    for name in crashed + list(rc):  # a Python error first: it explains why the others were aborted
        assert rc[name] == 0, f"{name} exited with {rc[name]}: {stderr[name][-3000:]}"
    results = {name: lines[name][-1] for name in lines}
    p0, p1, ref = results["p0"], results["p1"], results["ref"]
    assert [p0["processes"], p0["devices"], p0["writer"], p1["writer"], ref["devices"]] == [2, 2, True, False, 1]
    assert p0["on_writer"] == p1["on_writer"] == ref["on_writer"] == {"from": 0, "work": [1, 2]}
    refused = "out = 'results' is invalid: allowed is a directory without earlier results"
    assert p0["on_writer_error"] == ref["on_writer_error"] == refused
    assert p1["on_writer_error"] == f"process 0 failed (ConfigError): {refused}"
    for mode in ("shard_map", "dispatch", "simulate"):
        assert json.dumps(p0[mode]) == json.dumps(p1[mode]), mode  # the same in every process, bit for bit
    assert json.dumps(p0["dispatch"]) == json.dumps(ref["dispatch"])  # bit-identical to one device
    assert json.dumps(p0["simulate"]) == json.dumps(ref["simulate"])
    assert json.dumps(ref["dispatch"]) == json.dumps(ref["shard_map"])  # one device: one program
    assert set(p0["shard_map"]) == set(ref["shard_map"])
    for metric, stat in ref["shard_map"].items():
        assert stat["n"] + stat["n_invalid"] == SAMPLES
        assert _close(p0["shard_map"][metric], stat, rel=1e-6), (metric, p0["shard_map"][metric], stat)


SWEEP_SPEC = """
name = "dist"
preset = "mixtral-8x7b"
curves = ["topk", "siftmoe"]
samples = 64
seed = 2
[fixed]
n_tokens = 1
n_layers = 1
[[axes]]
field = "bandwidth_hz"
values = [1.8e6, 2.0e6]
"""


def test_cli_sweep_distributed_writes_once_and_equals_one_process(tmp_path):
    """`sift-jax sweep --distributed` in two processes: process 0 alone writes OUT/dist.nc (and says so),
    process 1 prints nothing; the dataset equals a one-process sweep's bit for bit (sweeps use "dispatch")."""
    import xarray as xr

    from sift_jax import sweep as sweeps

    spec = tmp_path / "dist.toml"
    spec.write_text(SWEEP_SPEC)
    port = _free_port()
    code = "from sift_jax.cli import main; main()"
    procs = []
    try:
        for i in range(2):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("SIFT_JAX_", "XLA_FLAGS"))}
            env |= {
                "JAX_PLATFORMS": "cpu",
                "SIFT_JAX_INIT_TIMEOUT": "120",
                "SIFT_JAX_COORDINATOR": f"127.0.0.1:{port}",
                "SIFT_JAX_NUM_PROCESSES": "2",
                "SIFT_JAX_PROCESS_ID": str(i),
            }
            with open(tmp_path / f"s{i}.out", "w") as out, open(tmp_path / f"s{i}.err", "w") as err:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            code,
                            "sweep",
                            str(spec),
                            "--distributed",
                            "--out",
                            str(tmp_path / "out"),
                            "--quiet",
                        ],
                        env=env,
                        stdout=out,
                        stderr=err,
                    )
                )
        for proc in procs:
            proc.wait(timeout=DEADLINE_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = [(tmp_path / f"s{i}.err").read_text() for i in range(2)]
    if any(p.returncode < 0 for p in procs) and not any("Traceback" in e for e in err):
        pytest.skip(f"two local jax.distributed CPU processes cannot start here: {err[0][-300:]}")
    assert [p.returncode for p in procs] == [0, 0], err
    outs = [(tmp_path / f"s{i}.out").read_text() for i in range(2)]
    assert "wrote" in outs[0] and "wrote" not in outs[1]
    alone = sweeps.run(sweeps.load_spec(spec), out=None)
    # values and coordinates bit for bit (attributes record the 2 devices and their joint chunk size)
    xr.testing.assert_equal(xr.load_dataset(tmp_path / "out" / "dist.nc"), alone)
