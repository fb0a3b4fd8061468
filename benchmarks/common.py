"""Timing helpers shared by the benchmarks (best-of-n wall time after a warm-up call)."""

from __future__ import annotations

import os
import platform
import time

import jax


def machine() -> str:
    """One line naming the machine and software."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores, backend {jax.default_backend()} ({dev.device_kind}), "
        f"jax {jax.__version__}, x64={jax.config.jax_enable_x64}"
    )


def best_time(fn, *args, repeats: int = 5) -> float:
    """Best wall time (s) of fn(*args) over `repeats` runs, after one warm-up (compile) call.
    JAX outputs are waited on with block_until_ready."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best
