"""Shared test set-up: the x64 toggling fixture. The NumPy references live in `sift_jax.testing`."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run a test with jax_enable_x64 on, restoring the previous setting."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


# not test modules: a worker script run by test_distributed.py, and a user plugin that registers records
# (importing it for doctests would leave its policy, fading family and metric registered in that worker)
collect_ignore = ["distributed_worker.py", "plugins"]
