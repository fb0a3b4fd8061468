"""Scenario: every parameter of the paper's system model (§1) as one `flax.struct` pytree.

Static fields (`pytree_node=False`) set shapes or control flow and are part of the jit cache key;
every other field is a dynamic leaf (a float, or an [N-1] array for per-helper fields), so a grid of
scenarios that differ only in dynamic fields runs as one vmapped compiled call. SI units throughout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from flax import struct

from sift_jax.errors import ConfigError

__all__ = ["Scenario", "UNITS", "make", "validate"]

FADING_FAMILIES = ("gamma", "rayleigh", "nakagami", "rician", "lognormal")


@struct.dataclass
class Scenario:
    """One wireless distributed-MoE inference setting (paper §1), SI units.

    Node 0 is the user (UE); nodes 1..N-1 are helpers; expert v of every layer lives on node v.
    Fields named `*_hz`, `*_s`, `*_w`, `*_m`, `*_bits`, `*_flops*` are in Hz, s, W, m, bit, FLOP(/s).
    Per-helper fields (`bandwidth_hz`, `helper_flops_per_s`, `helper_load_time_s`) take a scalar
    or an [N-1] array. The unit of every dynamic field is in `UNITS`.

    The constructor does not check values; `make`, `validate` and the validated `sc.replace(...)`
    do (raising `ConfigError`). `sift_jax.presets.get` returns validated paper settings.

    Example:
        >>> sc = Scenario(n_nodes=4, top_k=2)
        >>> sc.n_helpers
        3
        >>> sc.replace(deadline_s=0.05).deadline_s
        0.05
        >>> sc.replace(bandwidth_hz=[1e6, 2e6, 3e6]).bandwidth_hz    # per-helper field: [N-1] values
        [1000000.0, 2000000.0, 3000000.0]
        >>> sc.inv_gain_mean            # E[1/h] of Gamma(2, 1/2) fading: m / (m - 1) = 2
        2.0
    """

    # ---- static: shapes and control flow ----
    n_nodes: int = struct.field(pytree_node=False, default=8)  # N: experts per layer = nodes
    top_k: int = struct.field(pytree_node=False, default=2)  # K
    n_tokens: int = struct.field(pytree_node=False, default=1)  # M (1 = decoding)
    n_layers: int = struct.field(pytree_node=False, default=1)  # L
    n_slots: int = struct.field(pytree_node=False, default=16)  # Q cap for fast fading
    fading: str = struct.field(pytree_node=False, default="gamma")
    fading_shape: float = struct.field(pytree_node=False, default=2.0)  # m of Gamma/Nakagami
    n_clusters: int = struct.field(pytree_node=False, default=4)  # synthetic similarity: expert clusters
    table_seed: int = struct.field(pytree_node=False, default=0)  # synthetic similarity table seed
    # ---- radio (dynamic) ----
    bandwidth_hz: Any = 1e6  # B_n, per helper
    deadline_s: Any = 0.7  # T, per layer
    eta: Any = 200.0  # tolerable expected deviation per layer
    helper_power_w: Any = 10 ** (38 / 10) / 1e3  # P_n,UE (38 dBm)
    noise_psd_w_per_hz: Any = 10 ** (-174 / 10) / 1e3  # N0 (-174 dBm/Hz)
    pathloss_exponent: Any = 4.0  # alpha
    gain_up: Any = 1.0  # G_UE,n
    gain_down: Any = 1.0  # G_n,UE
    rician_k: Any = 3.0  # K-factor (linear) when fading == "rician"
    shadowing_db: Any = 8.0  # log-normal sigma (dB) when fading == "lognormal"
    min_distance_m: Any = 10.0
    max_distance_m: Any = 150.0
    max_tx_power_w: Any = math.inf  # user transmit-power cap; inf = none (paper)
    # ---- model and compute (dynamic) ----
    hidden_bits: Any = 24576.0  # b
    expert_flops: Any = 9.44e6  # phi, per token
    user_flops_per_s: Any = 1e12  # C_UE
    helper_flops_per_s: Any = 1e12  # C_n, per helper
    user_load_time_s: Any = 1e-3  # T_UE,load
    user_load_power_w: Any = 10.0  # P_UE,load
    user_compute_power_w: Any = 10.0  # P_UE,cp
    helper_load_time_s: Any = 1e-3  # T_n,load, per helper
    slot_s: Any = 1e-3  # tau (fast fading)
    # ---- synthetic router (dynamic) ----
    gate_temperature: Any = 1.0  # softmax temperature of the router logits
    popularity_skew: Any = 0.5  # std of the per-layer expert popularity offsets (logit units)
    # ---- synthetic expert-output latent model for the similarity table (dynamic) ----
    output_norm: Any = 1.0  # median expert output norm ||FFN_i(z)|| (sets the table's scale)
    output_norm_sigma: Any = 0.3  # log-normal spread of the output norms across experts
    intra_cluster_cosine: Any = 0.9  # mean cosine of outputs of experts in the same cluster

    @property
    def n_helpers(self) -> int:
        """N-1, the number of helpers (nodes 1..N-1)."""
        return self.n_nodes - 1

    @property
    def inv_gain_mean(self) -> float:
        """E[1/h] of the fading family (inf where it diverges). Used by the fast-fading surrogate."""
        return inverse_gain_mean(self.fading, self.fading_shape)


def inverse_gain_mean(fading: str, shape: float) -> float:
    """E[1/h] for unit-mean power gain h; `inf` where the expectation diverges.

    Gamma/Nakagami shape m: E[1/h] = m/(m-1) for m > 1 (paper: m = 2 gives 2). Rayleigh: inf.
    Rician and log-normal have no simple closed form used here: returns nan (caller must supply one).

    >>> inverse_gain_mean("gamma", 2.0)
    2.0
    """
    if fading in ("gamma", "nakagami"):
        return shape / (shape - 1.0) if shape > 1.0 else math.inf
    if fading == "rayleigh":
        return math.inf
    return math.nan


STATIC_FIELDS = tuple(f.name for f in dataclasses.fields(Scenario) if not f.metadata.get("pytree_node", True))
DYNAMIC_FIELDS = tuple(f.name for f in dataclasses.fields(Scenario) if f.metadata.get("pytree_node", True))
PER_HELPER_FIELDS = ("bandwidth_hz", "helper_flops_per_s", "helper_load_time_s")
UNITS = {
    "bandwidth_hz": "Hz", "deadline_s": "s", "eta": "-", "helper_power_w": "W", "noise_psd_w_per_hz": "W/Hz",
    "pathloss_exponent": "-", "gain_up": "-", "gain_down": "-", "rician_k": "-", "shadowing_db": "dB",
    "min_distance_m": "m", "max_distance_m": "m", "max_tx_power_w": "W", "hidden_bits": "bit",
    "expert_flops": "FLOP", "user_flops_per_s": "FLOP/s", "helper_flops_per_s": "FLOP/s",
    "user_load_time_s": "s", "user_load_power_w": "W", "user_compute_power_w": "W",
    "helper_load_time_s": "s", "slot_s": "s", "gate_temperature": "-", "popularity_skew": "-",
    "output_norm": "-", "output_norm_sigma": "-", "intra_cluster_cosine": "-",
}

# (field, lower, lower inclusive?, upper, allow inf)
_RANGES = {
    "bandwidth_hz": (0.0, False, math.inf, False),
    "deadline_s": (0.0, False, math.inf, False),
    "eta": (0.0, True, math.inf, True),
    "helper_power_w": (0.0, False, math.inf, False),
    "noise_psd_w_per_hz": (0.0, False, math.inf, False),
    "pathloss_exponent": (0.0, True, 10.0, False),
    "gain_up": (0.0, False, math.inf, False),
    "gain_down": (0.0, False, math.inf, False),
    "rician_k": (0.0, True, math.inf, False),
    "shadowing_db": (0.0, True, 30.0, False),
    "min_distance_m": (0.0, False, math.inf, False),
    "max_distance_m": (0.0, False, math.inf, False),
    "max_tx_power_w": (0.0, False, math.inf, True),
    "hidden_bits": (0.0, False, math.inf, False),
    "expert_flops": (0.0, False, math.inf, False),
    "user_flops_per_s": (0.0, False, math.inf, False),
    "helper_flops_per_s": (0.0, False, math.inf, False),
    "user_load_time_s": (0.0, True, math.inf, False),
    "user_load_power_w": (0.0, True, math.inf, False),
    "user_compute_power_w": (0.0, True, math.inf, False),
    "helper_load_time_s": (0.0, True, math.inf, False),
    "slot_s": (0.0, False, math.inf, False),
    "gate_temperature": (0.0, False, math.inf, False),
    "popularity_skew": (0.0, True, math.inf, False),
    "output_norm": (0.0, False, math.inf, False),
    "output_norm_sigma": (0.0, True, 5.0, False),
    "intra_cluster_cosine": (-1.0, True, 1.0, False),
}
_STATIC_INT_RANGES = {"n_nodes": (2, 1024), "top_k": (1, 64), "n_tokens": (1, 65536), "n_layers": (1, 1024),
                      "n_slots": (1, 4096), "n_clusters": (1, 1024), "table_seed": (0, 2**31 - 1)}


def _describe(lo, lo_incl, hi, allow_inf) -> str:
    left = ">=" if lo_incl else ">"
    text = f"a finite number {left} {lo:g}" if not allow_inf else f"a number {left} {lo:g} (inf allowed)"
    if math.isfinite(hi):
        text += f" and < {hi:g}"
    return text


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def validate(sc: Scenario) -> Scenario:
    """Check every field; raise `ConfigError` naming the first bad one. Returns `sc` unchanged.

    Checks the static integer ranges, top_k <= n_nodes, the fading family and shape, the range and
    shape (scalar, or [N-1] for per-helper fields) of every dynamic field, and
    min_distance_m <= max_distance_m. Traced leaves (inside jit/vmap) are skipped: validate concrete
    scenarios before transforming.

    Args:
        sc: the Scenario to check.

    Returns:
        Scenario: `sc` itself, unchanged (so calls can be chained).

    Raises:
        ConfigError: the first invalid field, with its value and what is allowed.

    Example:
        >>> sc = Scenario(n_nodes=4, top_k=2)
        >>> validate(sc) is sc
        True
        >>> validate(Scenario(n_nodes=4, top_k=5))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: top_k = 5 is invalid: allowed is an integer in [1, n_nodes=4]
        >>> validate(Scenario(n_nodes=3, bandwidth_hz=[1e6, 1e6, 1e6]))   # N-1 = 2 helpers
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: bandwidth_hz = [...] is invalid: allowed is a scalar or an array of shape (2,)
    """
    if not isinstance(sc, Scenario):
        raise ConfigError("scenario", type(sc).__name__, "a sift_jax.Scenario")
    for name, (lo, hi) in _STATIC_INT_RANGES.items():
        value = getattr(sc, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise ConfigError(name, value, f"an integer in [{lo}, {hi}]")
    if sc.top_k > sc.n_nodes:
        raise ConfigError("top_k", sc.top_k, f"an integer in [1, n_nodes={sc.n_nodes}]")
    if sc.fading not in FADING_FAMILIES:
        raise ConfigError("fading", sc.fading, f"one of {', '.join(FADING_FAMILIES)}")
    shape = sc.fading_shape
    if isinstance(shape, bool) or not isinstance(shape, (int, float, np.floating, np.integer)) \
            or not math.isfinite(shape) or not 0.5 <= shape <= 64:
        raise ConfigError("fading_shape", shape, "a number in [0.5, 64] (Gamma/Nakagami m)")
    if sc.fading == "gamma" and float(shape) != int(shape):
        raise ConfigError("fading_shape", shape,
                          "an integer for fading='gamma' (drawn as a sum of exponentials); use fading='nakagami'"
                          " for a non-integer m")
    for name, (lo, lo_incl, hi, allow_inf) in _RANGES.items():
        value = getattr(sc, name)
        if _is_traced(value):
            continue
        if type(value) in (float, int):  # fast path for plain numbers (sweeps build one Scenario per point)
            x = float(value)
            if math.isnan(x) or x < lo or (x == lo and not lo_incl) or (x >= hi and math.isfinite(hi)) or \
                    (math.isinf(x) and not allow_inf):
                raise ConfigError(name, value, _describe(lo, lo_incl, hi, allow_inf))
            continue
        if isinstance(value, (bool, str)) or value is None:
            raise ConfigError(name, value, _describe(lo, lo_incl, hi, allow_inf))
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(name, value, _describe(lo, lo_incl, hi, allow_inf)) from None
        allowed_shapes = [()] + ([(sc.n_helpers,)] if name in PER_HELPER_FIELDS else [])
        if arr.shape not in allowed_shapes:
            what = f"a scalar or an array of shape ({sc.n_helpers},)" if name in PER_HELPER_FIELDS else "a scalar"
            raise ConfigError(name, value, what)
        bad = np.isnan(arr) | (arr < lo) | ((arr == lo) & (not lo_incl)) | ((arr >= hi) & math.isfinite(hi)) | \
            (np.isinf(arr) & (not allow_inf))
        if np.any(bad):
            shown = value if arr.shape == () else arr.tolist()
            raise ConfigError(name, shown, _describe(lo, lo_incl, hi, allow_inf))
    if not _is_traced(sc.min_distance_m) and not _is_traced(sc.max_distance_m) \
            and float(sc.min_distance_m) > float(sc.max_distance_m):
        raise ConfigError("min_distance_m", sc.min_distance_m, f"a distance <= max_distance_m={sc.max_distance_m}")
    return sc


def make(**fields) -> Scenario:
    """Build and validate a Scenario; unknown field names raise `ConfigError`.

    Args:
        **fields: Scenario field values (SI units, see `UNITS`); the rest keep their defaults.

    Returns:
        Scenario: the validated scenario.

    Raises:
        ConfigError: an unknown field name or an invalid value.

    Example:
        >>> sc = make(n_nodes=3, top_k=1, deadline_s=0.1)
        >>> sc.n_helpers, sc.deadline_s
        (2, 0.1)
        >>> make(n_nodes=3, top_k=1, colour=1)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: colour = 1 is invalid: allowed is a Scenario field (...)
        >>> make(deadline_s=0.0)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: deadline_s = 0.0 is invalid: allowed is a finite number > 0
    """
    return replace(Scenario(), **fields)


def replace(sc: Scenario, **fields) -> Scenario:
    """`sc` with some fields changed, validated; unknown names raise `ConfigError`.

    Installed as the method `Scenario.replace` (flax's default `replace` skips validation).

    Args:
        sc: the scenario to start from (not modified).
        **fields: new field values (SI units, see `UNITS`).

    Returns:
        Scenario: a new, validated scenario.

    Raises:
        ConfigError: an unknown field name or an invalid value.

    Example:
        >>> sc = Scenario(n_nodes=4).replace(eta=1.5)
        >>> sc.eta, Scenario(n_nodes=4).eta
        (1.5, 200.0)
        >>> sc.replace(eta=-1.0)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: eta = -1.0 is invalid: allowed is a number >= 0 (inf allowed)
    """
    known = STATIC_FIELDS + DYNAMIC_FIELDS
    for name in fields:
        if name not in known:
            raise ConfigError(name, fields[name], "a Scenario field (...)",
                              message=f"{name} = {fields[name]!r} is invalid: allowed is a Scenario field (one of "
                                      f"{', '.join(known)})")
    return validate(dataclasses.replace(sc, **fields))


Scenario.replace = replace  # validated replace (flax's default skips validation)
