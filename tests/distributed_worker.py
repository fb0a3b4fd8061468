"""One process of the multi-process test (`test_distributed.py`); also the one-process reference.

Reads SIFT_JAX_COORDINATOR / SIFT_JAX_NUM_PROCESSES / SIFT_JAX_PROCESS_ID (set by the test), joins the job
through `sift_jax.distributed.initialize_from_env`, runs `montecarlo.run` of a policy's `TaskMetrics` on
Mixtral (1 token, 1 layer) with sharding "shard_map" and "dispatch", and `simulate`, and prints JSON lines:
{"joined", "global_sum"} once the job runs, then
{"process", "processes", "devices", "writer", "shard_map", "dispatch", "simulate"}, the last three
{metric: Stat.to_dict()}, and the seconds each took; or {"init_error"} and exit status 3 when the job cannot
start (no coordinator, no cross-process collectives).
Usage: python distributed_worker.py POLICY SAMPLES SEED CHUNK
"""

import json
import sys
import time

import jax

from sift_jax import distributed

try:  # before any other JAX call
    pid, n_proc = distributed.initialize_from_env()
    jax.devices()  # creates the backend, with its cross-process collectives (gloo on CPU)
except (jax.errors.JaxRuntimeError, RuntimeError) as err:  # the runtime could not start: the test skips on it
    if not isinstance(err, jax.errors.JaxRuntimeError) and "Unable to initialize backend" not in str(err):
        raise  # anything else (ConfigError, misuse) is a failure
    print(json.dumps({"init_error": f"{type(err).__name__}: {err}"}), flush=True)
    sys.exit(3)

import jax.numpy as jnp
import numpy as np


def _joined() -> dict:
    """A global sum over the processes (each contributes its id + 1 per local device): proves the job runs."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("p",))
    x = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("p")),
        np.full(jax.local_device_count(), pid + 1, np.float32),
    )
    return {"joined": pid, "global_sum": float(jax.jit(jnp.sum)(x))}


print(json.dumps(_joined()), flush=True)

import sift_jax as sj  # noqa: E402
from sift_jax.simulate import TaskMetrics  # noqa: E402


def main(policy: str, samples: int, seed: int, chunk: int) -> None:
    sc = sj.presets.get("mixtral-8x7b").replace(n_tokens=1, n_layers=1)
    tables = sj.similarity.synthetic_tables(sc)
    params = jax.tree.map(lambda x: np.asarray(x)[None], (sc, tables))  # one point
    out = {"process": pid, "processes": n_proc, "devices": jax.device_count(), "writer": distributed.is_writer()}
    seconds = out["seconds"] = {}
    for mode in ("shard_map", "dispatch"):
        t0 = time.perf_counter()
        (stats,) = sj.montecarlo.run(TaskMetrics(policy), params, 1, samples, seed, chunk, sharding=mode)
        out[mode] = {name: s.to_dict() for name, s in stats.items()}
        seconds[mode] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    res = sj.simulate(sc, policy=policy, samples=samples, seed=seed, chunk_size=chunk)
    out["simulate"] = {name: s.to_dict() for name, s in res.metrics.items()}
    seconds["simulate"] = round(time.perf_counter() - t0, 2)
    out["on_writer"] = distributed.on_writer(lambda: {"from": pid, "work": (1, 2)})

    def refuse():
        raise sj.ConfigError("out", "results", "a directory without earlier results")

    try:
        distributed.on_writer(refuse)
    except sj.ConfigError as err:  # every process raises it
        out["on_writer_error"] = str(err)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:5]))
