"""Shared test set-up: repo root on sys.path (for benchmarks.numpy_reference), x64 toggling fixture."""

import pathlib
import sys

import jax
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


@pytest.fixture
def x64():
    """Run a test with jax_enable_x64 on, restoring the previous setting."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)
