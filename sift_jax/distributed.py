"""Several processes (hosts) running one Monte Carlo job: `jax.distributed` set up from environment variables.

Every process runs the same program: it calls `initialize_from_env()` before any other JAX call, then the
same `montecarlo.run` / `simulate` / sweep calls with the same arguments. `jax.devices()` then lists the
devices of all processes, `montecarlo.run` spreads each chunk's samples over all of them and every process
gets the same statistics; only `is_writer()` (process 0) should write files. What decides the work (e.g. which
parts of a sweep exist already) is decided once, by process 0, and shared (`on_writer`): every process must
make the same calls in the same order, since each chunk of `montecarlo.run` ends in a collective.

Configuration, in order:

1. ``SIFT_JAX_COORDINATOR`` (``host:port`` of process 0, reachable from every process),
   ``SIFT_JAX_NUM_PROCESSES`` and ``SIFT_JAX_PROCESS_ID`` (0 .. N-1): all three, or none of them. Optional
   ``SIFT_JAX_INIT_TIMEOUT``: seconds to wait for all processes to join (JAX's default: 300).
2. None of them set: `jax.distributed.initialize()` with no arguments, which reads ``JAX_COORDINATOR_ADDRESS``
   and ``JAX_LOCAL_DEVICE_IDS`` and detects the cluster itself: SLURM (``SLURM_JOB_ID``,
   ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``, as set by ``srun``),
   Open MPI (``OMPI_MCA_orte_hnp_uri``, ``OMPI_COMM_WORLD_SIZE``, ``OMPI_COMM_WORLD_RANK``, from ``mpirun``),
   Cloud TPU pods and, in recent JAX, Kubernetes; which ones depends on the JAX version.

On CPU, cross-process collectives need an implementation: ``gloo`` (bundled with jaxlib; the default of
``jax_cpu_collectives_implementation`` in recent JAX, selected here where the option is unset); another
choice made beforehand (e.g. ``mpi``) is kept. It does not affect GPU or TPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from sift_jax.errors import ConfigError

__all__ = ["initialize_from_env", "is_writer", "on_writer", "parse_env"]

COORDINATOR, NUM_PROCESSES, PROCESS_ID, INIT_TIMEOUT = (
    "SIFT_JAX_COORDINATOR",
    "SIFT_JAX_NUM_PROCESSES",
    "SIFT_JAX_PROCESS_ID",
    "SIFT_JAX_INIT_TIMEOUT",
)
REQUIRED = (COORDINATOR, NUM_PROCESSES, PROCESS_ID)


def _integer(env: Mapping[str, str], name: str, low: int, high: int | None, allowed: str) -> int:
    text = env[name].strip()
    try:
        value = int(text, 10)
    except ValueError:
        raise ConfigError(name, env[name], allowed) from None
    if value < low or (high is not None and value > high):
        raise ConfigError(name, env[name], allowed)
    return value


def parse_env(env: Mapping[str, str]) -> dict:
    """Keyword arguments for `jax.distributed.initialize` from ``SIFT_JAX_*`` variables (pure: reads `env` only).

    Args:
        env: a mapping like `os.environ`. ``SIFT_JAX_COORDINATOR`` = ``host:port`` (an IPv6 host in
            brackets: ``[::1]:1234``), ``SIFT_JAX_NUM_PROCESSES`` = N >= 1, ``SIFT_JAX_PROCESS_ID`` in
            [0, N - 1]: all three or none; optional ``SIFT_JAX_INIT_TIMEOUT`` = seconds >= 1.

    Returns:
        {"coordinator_address": str, "num_processes": int, "process_id": int} (plus "initialization_timeout"
        when set), or {} when none of the three is set: JAX then detects the cluster (SLURM, Open MPI,
        Cloud TPU, ...) or reads ``JAX_COORDINATOR_ADDRESS`` itself.

    Raises:
        ConfigError: one of the three missing while another is set, or a value that is not allowed
            (the error names the variable).

    Example:
        >>> parse_env({"SIFT_JAX_COORDINATOR": "10.0.0.1:1234", "SIFT_JAX_NUM_PROCESSES": "2",
        ...            "SIFT_JAX_PROCESS_ID": "1"})
        {'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1}
        >>> parse_env({"SLURM_PROCID": "0"})  # no SIFT_JAX_* variable: left to JAX's cluster detection
        {}
        >>> parse_env({"SIFT_JAX_COORDINATOR": "10.0.0.1:1234", "SIFT_JAX_NUM_PROCESSES": "2",
        ...            "SIFT_JAX_PROCESS_ID": "2"})
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: SIFT_JAX_PROCESS_ID = '2' is invalid: allowed is an integer in [0, 1] (...)
        >>> parse_env({"SIFT_JAX_COORDINATOR": "10.0.0.1"})
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: SIFT_JAX_COORDINATOR = '10.0.0.1' is invalid: allowed is host:port with a port ...
    """
    given = [name for name in REQUIRED if env.get(name, "").strip()]
    if not given:
        if env.get(INIT_TIMEOUT, "").strip():
            raise ConfigError(INIT_TIMEOUT, env[INIT_TIMEOUT], f"only together with {', '.join(REQUIRED)}")
        return {}
    address = env.get(COORDINATOR, "").strip()
    if address:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(COORDINATOR, env[COORDINATOR], "host:port with a port in [1, 65535]")
    missing = [name for name in REQUIRED if name not in given]
    if missing:
        verb = "is" if len(given) == 1 else "are"
        raise ConfigError(
            missing[0],
            None,
            message=f"{missing[0]} is not set but {' and '.join(given)} {verb}: "
            f"set all of {', '.join(REQUIRED)} or none",
        )
    n = _integer(env, NUM_PROCESSES, 1, None, "an integer >= 1")
    out = {
        "coordinator_address": address,
        "num_processes": n,
        "process_id": _integer(env, PROCESS_ID, 0, n - 1, f"an integer in [0, {n - 1}] ({NUM_PROCESSES} - 1)"),
    }
    if env.get(INIT_TIMEOUT, "").strip():
        out["initialization_timeout"] = _integer(env, INIT_TIMEOUT, 1, None, "an integer number of seconds >= 1")
    return out


def _use_gloo_on_cpu() -> None:
    """Cross-process collectives on the CPU backend through gloo, unless an implementation was chosen."""
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option: nothing to choose
        pass


def initialize_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Join this process to a multi-process JAX job configured by environment variables (see the module).

    Call it first, before any other JAX call (JAX refuses to initialise once a computation ran). Idempotent:
    once `jax.distributed` is initialised (by this function or directly), it returns the current process id
    and count without re-reading `env`. With ``SIFT_JAX_NUM_PROCESSES=1`` nothing is initialised. When the
    processes do not all join within the timeout (``SIFT_JAX_INIT_TIMEOUT``), or one of them dies later,
    JAX's coordination service terminates the others (an abort with a DEADLINE_EXCEEDED log line on stderr,
    not a Python exception).

    Args:
        env: the variables to read (default `os.environ`).

    Returns:
        (process_id, num_processes) of this process.

    Raises:
        ConfigError: bad ``SIFT_JAX_*`` values (`parse_env`), or no variables at all and no cluster that JAX
            detects.
        RuntimeError: JAX was already used in this process before it could be initialised.

    Example:
        One process needs no coordinator (the address is checked but not used):

        >>> initialize_from_env({"SIFT_JAX_COORDINATOR": "127.0.0.1:12345", "SIFT_JAX_NUM_PROCESSES": "1",
        ...                      "SIFT_JAX_PROCESS_ID": "0"})
        (0, 1)

        Each of two processes on one machine would run (with its own id; process 0 listens on the port):

        >>> env = {"SIFT_JAX_COORDINATOR": "127.0.0.1:12345", "SIFT_JAX_NUM_PROCESSES": "2",
        ...        "SIFT_JAX_PROCESS_ID": "0"}
        >>> initialize_from_env(env)  # doctest: +SKIP
        (0, 2)
    """
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    kwargs = parse_env(os.environ if env is None else env)
    if kwargs.get("num_processes") == 1:
        return 0, 1
    _use_gloo_on_cpu()
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as err:
        if kwargs:
            raise
        raise ConfigError(
            COORDINATOR,
            None,
            message=(
                f"no multi-process configuration found ({err}): set {', '.join(REQUIRED)} in every process, or "
                "run under a cluster that jax.distributed detects (SLURM srun, Open MPI mpirun, Cloud TPU)"
            ),
        ) from err
    except RuntimeError as err:
        if "before any JAX calls" in str(err):
            raise RuntimeError(
                f"sift_jax.distributed.initialize_from_env() must run before any other JAX call in the process: {err}"
            ) from err
        raise
    return jax.process_index(), jax.process_count()


def is_writer() -> bool:
    """Whether this process writes results (process 0; the only process when JAX is not distributed).

    All processes compute the same statistics; letting one of them write avoids clashing files. Call it
    after `initialize_from_env` (like any JAX call, it would otherwise start JAX as a single process).

    Returns:
        True in process 0.

    Example:
        >>> is_writer()  # a single process
        True
    """
    return jax.process_index() == 0


def on_writer(fn: Callable[[], Any]) -> Any:
    """Run fn() in process 0 only and return its result in every process (all must call this together).

    For decisions every process must share but only one may make, e.g. open a run's store and list the
    parts already present: process 0 decides, the others follow, so their collective calls stay in step.
    If fn raises in process 0, it raises there and every other process raises a `ConfigError` (when fn
    raised one) or a `RuntimeError` with the same message, instead of waiting forever for process 0.

    Args:
        fn: a callable without arguments returning a JSON-able value (lists, dicts, numbers, strings).

    Returns:
        fn()'s result after a JSON round trip (so tuples come back as lists), the same in every process.

    Raises:
        ConfigError or RuntimeError: fn raised in process 0 (there: fn's own exception).

    Example:
        >>> on_writer(lambda: {"done": (0, 2)})  # one process: fn runs here
        {'done': [0, 2]}
    """
    if jax.process_count() == 1:
        return json.loads(json.dumps(fn()))
    from jax.experimental import multihost_utils

    error, payload = None, b""
    if is_writer():
        try:
            payload = json.dumps(fn()).encode()
        except Exception as err:  # shared below, so that no process waits for process 0 forever
            error = err
            payload = json.dumps({"type": type(err).__name__, "message": str(err)}).encode()
    header = multihost_utils.broadcast_one_to_all(np.array([len(payload), error is not None], np.int32))
    size, failed = int(header[0]), bool(header[1])
    data = np.frombuffer(payload, np.uint8) if is_writer() else np.zeros(size, np.uint8)
    text = bytes(np.asarray(multihost_utils.broadcast_one_to_all(data), np.uint8)).decode()
    if failed:
        if error is not None:
            raise error
        info = json.loads(text)
        message = f"process 0 failed ({info['type']}): {info['message']}"
        if info["type"] == "ConfigError":
            raise ConfigError("process 0", None, message=message)
        raise RuntimeError(message)
    return json.loads(text)
