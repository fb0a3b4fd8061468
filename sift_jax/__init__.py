"""sift_jax: a JAX Monte Carlo engine for SiftMoE (arXiv 2603.23888)."""
from sift_jax import channel, costs, presets, stats
from sift_jax.errors import ConfigError
from sift_jax.scenario import Scenario, validate

__all__ = ["ConfigError", "Scenario", "channel", "costs", "presets", "stats", "validate"]
