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

from sift_jax import fading as fading_families
from sift_jax.errors import ConfigError

__all__ = ["FIELDS", "UNITS", "FieldInfo", "Scenario", "make", "validate"]

INF = math.inf


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What a Scenario field means and which values it takes (the field's metadata, `FIELDS[name]`).

    Attributes:
        unit: SI unit ("-" for dimensionless). meaning: one line, with the paper's symbol.
        low, high: the allowed range; low_inclusive: whether `low` itself is allowed (`high` never is,
            except for integer fields, whose range [low, high] is closed); allow_inf: +inf allowed.
        integer: an integer field. static: sets shapes or control flow (part of the jit cache key).
        per_helper: a scalar or an [N-1] array. tables: read by `similarity.synthetic_tables`.

    Example:
        >>> FIELDS["eta"].describe(), FIELDS["n_nodes"].describe()
        ('a number >= 0 (inf allowed)', 'an integer in [2, 1024]')
    """

    unit: str
    meaning: str
    low: float = 0.0
    high: float = INF
    low_inclusive: bool = False
    allow_inf: bool = False
    integer: bool = False
    static: bool = False
    per_helper: bool = False
    tables: bool = False

    def describe(self) -> str:
        """The allowed values in words (what a `ConfigError` says).

        Returns:
            e.g. "a finite number > 0" or "an integer in [1, 64]".

        Example:
            >>> FieldInfo("s", "a time").describe()
            'a finite number > 0'
        """
        if self.integer:
            return f"an integer in [{self.low:g}, {self.high:g}]"
        left = ">=" if self.low_inclusive else ">"
        text = (
            f"a finite number {left} {self.low:g}"
            if not self.allow_inf
            else f"a number {left} {self.low:g} (inf allowed)"
        )
        if math.isfinite(self.high):
            text += f" and < {self.high:g}"
        return text


def _field(default, unit: str, meaning: str, low: float = 0.0, high: float = INF, **info):
    """A Scenario field whose metadata is its `FieldInfo` (and flax's/jax's pytree marker)."""
    return dataclasses.field(default=default, metadata={"info": FieldInfo(unit, meaning, low, high, **info)})


def _static_int(default: int, meaning: str, low: int, high: int, **info):
    return _field(default, "-", meaning, low, high, integer=True, static=True, **info)


def _positive(default, unit: str, meaning: str, **info):
    return _field(default, unit, meaning, **info)


def _non_negative(default, unit: str, meaning: str, **info):
    return _field(default, unit, meaning, low_inclusive=True, **info)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One wireless distributed-MoE inference setting (paper §1), SI units.

    Node 0 is the user (UE); nodes 1..N-1 are helpers; expert v of every layer lives on node v.
    Fields named `*_hz`, `*_s`, `*_w`, `*_m`, `*_bits`, `*_flops*` are in Hz, s, W, m, bit, FLOP(/s).
    Per-helper fields (`bandwidth_hz`, `helper_flops_per_s`, `helper_load_time_s`) take a scalar
    or an [N-1] array. Every field's unit, meaning and range is in `FIELDS` (its metadata).

    A Scenario is a pytree (`jax.tree_util.register_dataclass`): static fields are part of the jit
    cache key, the others are leaves, so scenarios that differ only in dynamic fields run as one vmapped
    compiled call. The constructor does not check values; `make`, `validate` and `sc.replace(...)` do
    (raising `ConfigError`). `sift_jax.presets.get` returns validated paper settings.

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
    n_nodes: int = _static_int(8, "N: experts per layer = nodes (node 0 is the user)", 2, 1024, tables=True)
    top_k: int = _static_int(2, "K: experts each token's router selects", 1, 64)
    n_tokens: int = _static_int(1, "M: tokens per layer (1 = decoding, > 1 = prefilling)", 1, 65536)
    n_layers: int = _static_int(1, "L: MoE layers per task", 1, 1024, tables=True)
    n_slots: int = _static_int(16, "Q: cap on uplink slots per helper (fast fading)", 1, 4096)
    fading: str = _field("gamma", "-", "fading family of the power gains (`sift_jax.fading.names()`)", static=True)
    fading_shape: float = _field(2.0, "-", "m of Gamma/Nakagami fading", 0.5, 64.0, low_inclusive=True, static=True)
    n_clusters: int = _static_int(4, "expert clusters of the synthetic similarity table", 1, 1024, tables=True)
    table_seed: int = _static_int(0, "seed of the synthetic similarity table", 0, 2**31 - 1, tables=True)
    # ---- radio (dynamic) ----
    bandwidth_hz: Any = _positive(1e6, "Hz", "B_n: uplink bandwidth per helper", per_helper=True)
    deadline_s: Any = _positive(0.7, "s", "T: latency threshold per layer")
    eta: Any = _non_negative(200.0, "-", "eta: tolerable expected deviation per layer", allow_inf=True)
    helper_power_w: Any = _positive(10 ** (38 / 10) / 1e3, "W", "P_n,UE: helper downlink transmit power (38 dBm)")
    noise_psd_w_per_hz: Any = _positive(10 ** (-174 / 10) / 1e3, "W/Hz", "N0: noise power spectral density")
    pathloss_exponent: Any = _non_negative(4.0, "-", "alpha: path-loss exponent", high=10.0)
    gain_up: Any = _positive(1.0, "-", "G_UE,n: uplink antenna/path-loss reference gain")
    gain_down: Any = _positive(1.0, "-", "G_n,UE: downlink antenna/path-loss reference gain")
    rician_k: Any = _non_negative(3.0, "-", "K-factor (linear) of Rician fading")
    shadowing_db: Any = _non_negative(8.0, "dB", "sigma of log-normal shadowing", high=30.0)
    min_distance_m: Any = _positive(10.0, "m", "smallest user-helper distance")
    max_distance_m: Any = _positive(150.0, "m", "largest user-helper distance")
    max_tx_power_w: Any = _positive(math.inf, "W", "user transmit-power cap (inf = none, the paper)", allow_inf=True)
    # ---- model and compute (dynamic) ----
    hidden_bits: Any = _positive(24576.0, "bit", "b: bits of one token's hidden state")
    expert_flops: Any = _positive(9.44e6, "FLOP", "phi: FLOPs of one expert on one token")
    user_flops_per_s: Any = _positive(1e12, "FLOP/s", "C_UE: user compute speed")
    helper_flops_per_s: Any = _positive(1e12, "FLOP/s", "C_n: helper compute speed", per_helper=True)
    user_load_time_s: Any = _non_negative(1e-3, "s", "T_UE,load: user's expert load time")
    user_load_power_w: Any = _non_negative(10.0, "W", "P_UE,load: user's power while loading its expert")
    user_compute_power_w: Any = _non_negative(10.0, "W", "P_UE,cp: user's compute power")
    helper_load_time_s: Any = _non_negative(1e-3, "s", "T_n,load: helper's expert load time", per_helper=True)
    slot_s: Any = _positive(1e-3, "s", "tau: uplink slot length (fast fading)")
    # ---- synthetic router (dynamic) ----
    gate_temperature: Any = _positive(1.0, "-", "softmax temperature of the synthetic router logits")
    popularity_skew: Any = _non_negative(0.5, "-", "std of the per-layer expert popularity offsets (logit units)")
    # ---- synthetic expert-output latent model for the similarity table (dynamic) ----
    output_norm: Any = _positive(1.0, "-", "median expert output norm ||FFN_i(z)|| (the table's scale)", tables=True)
    output_norm_sigma: Any = _non_negative(
        0.3, "-", "log-normal spread of the output norms across experts", high=5.0, tables=True
    )
    intra_cluster_cosine: Any = _field(
        0.9, "-", "mean cosine of outputs of experts in one cluster", -1.0, 1.0, low_inclusive=True, tables=True
    )

    @property
    def n_helpers(self) -> int:
        """N-1, the number of helpers (nodes 1..N-1)."""
        return self.n_nodes - 1

    @property
    def inv_gain_mean(self) -> float:
        """E[1/h] of the fading family (inf where it diverges, nan where unknown; `sift_jax.fading`)."""
        return float(fading_families.get(self.fading).inverse_gain_mean(self))

    def replace(self, **fields) -> Scenario:
        """This scenario with some fields changed, validated; unknown names raise `ConfigError`.

        Args:
            **fields: new field values (SI units, see `FIELDS`).

        Returns:
            Scenario: a new, validated scenario (this one is not modified).

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
        for name in fields:
            if name not in FIELDS:
                raise ConfigError(
                    name,
                    fields[name],
                    "a Scenario field (...)",
                    message=f"{name} = {fields[name]!r} is invalid: allowed is a Scenario field (one of "
                    f"{', '.join(FIELDS)})",
                )
        return validate(dataclasses.replace(self, **fields))


FIELDS: dict[str, FieldInfo] = {f.name: f.metadata["info"] for f in dataclasses.fields(Scenario)}
STATIC_FIELDS = tuple(name for name, info in FIELDS.items() if info.static)
DYNAMIC_FIELDS = tuple(name for name, info in FIELDS.items() if not info.static)
PER_HELPER_FIELDS = tuple(name for name, info in FIELDS.items() if info.per_helper)
INTEGER_FIELDS = tuple(name for name, info in FIELDS.items() if info.integer)
TABLE_FIELDS = frozenset(name for name, info in FIELDS.items() if info.tables)  # read by synthetic_tables
UNITS = {name: FIELDS[name].unit for name in DYNAMIC_FIELDS}
jax.tree_util.register_dataclass(Scenario, data_fields=list(DYNAMIC_FIELDS), meta_fields=list(STATIC_FIELDS))


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
    for name in INTEGER_FIELDS:
        value, info = getattr(sc, name), FIELDS[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not info.low <= value <= info.high:
            raise ConfigError(name, value, info.describe())
    if sc.top_k > sc.n_nodes:
        raise ConfigError("top_k", sc.top_k, f"an integer in [1, n_nodes={sc.n_nodes}]")
    family = fading_families.get(sc.fading)
    shape = sc.fading_shape
    if (
        isinstance(shape, bool)
        or not isinstance(shape, (int, float, np.floating, np.integer))
        or not math.isfinite(shape)
        or not 0.5 <= shape <= 64
    ):
        raise ConfigError("fading_shape", shape, "a number in [0.5, 64] (Gamma/Nakagami m)")
    if family.check is not None:
        family.check(sc)
    for name in DYNAMIC_FIELDS:
        value, info = getattr(sc, name), FIELDS[name]
        lo, lo_incl, hi, allow_inf = info.low, info.low_inclusive, info.high, info.allow_inf
        if _is_traced(value):
            continue
        if type(value) in (float, int):  # fast path for plain numbers (sweeps build one Scenario per point)
            x = float(value)
            if (
                math.isnan(x)
                or x < lo
                or (x == lo and not lo_incl)
                or (x >= hi and math.isfinite(hi))
                or (math.isinf(x) and not allow_inf)
            ):
                raise ConfigError(name, value, info.describe())
            continue
        if isinstance(value, (bool, str)) or value is None:
            raise ConfigError(name, value, info.describe())
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(name, value, info.describe()) from None
        allowed_shapes = [()] + ([(sc.n_helpers,)] if name in PER_HELPER_FIELDS else [])
        if arr.shape not in allowed_shapes:
            what = f"a scalar or an array of shape ({sc.n_helpers},)" if name in PER_HELPER_FIELDS else "a scalar"
            raise ConfigError(name, value, what)
        bad = (
            np.isnan(arr)
            | (arr < lo)
            | ((arr == lo) & (not lo_incl))
            | ((arr >= hi) & math.isfinite(hi))
            | (np.isinf(arr) & (not allow_inf))
        )
        if np.any(bad):
            shown = value if arr.shape == () else arr.tolist()
            raise ConfigError(name, shown, info.describe())
    if (
        not _is_traced(sc.min_distance_m)
        and not _is_traced(sc.max_distance_m)
        and float(sc.min_distance_m) > float(sc.max_distance_m)
    ):
        raise ConfigError("min_distance_m", sc.min_distance_m, f"a distance <= max_distance_m={sc.max_distance_m}")
    return sc


def make(**fields) -> Scenario:
    """Build and validate a Scenario; unknown field names raise `ConfigError`.

    Args:
        **fields: Scenario field values (SI units, see `FIELDS`); the rest keep their defaults.

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
    return Scenario().replace(**fields)
