"""sift_jax: a JAX Monte Carlo engine for SiftMoE (arXiv 2603.23888).

>>> import sift_jax as sj
>>> sj.presets.get("switch-base-8").top_k
1
"""

from sift_jax import (
    bounds,
    channel,
    costs,
    fit,
    gating,
    metrics,
    montecarlo,
    policies,
    presets,
    similarity,
    stats,
    sweep,
    targets,
)
from sift_jax.errors import ConfigError
from sift_jax.scenario import Scenario, validate
from sift_jax.simulate import METRICS, SimResult, simulate
from sift_jax.stats import Stat

__all__ = [
    "METRICS",
    "ConfigError",
    "Scenario",
    "SimResult",
    "Stat",
    "bounds",
    "channel",
    "costs",
    "fit",
    "gating",
    "metrics",
    "montecarlo",
    "policies",
    "presets",
    "similarity",
    "simulate",
    "stats",
    "sweep",
    "targets",
    "validate",
]
