"""Fading families as registered records: the only list of channel power-gain distributions.

A `FadingFamily` draws unit-mean power gains h, gives E[1/h] (what the fast-fading surrogate and eq. (26)
need; inf where it diverges, nan where not known in closed form), says whether the exact DP bit loading
supports it (its tables integrate over Gamma(m) gains) and which Scenario fields parameterise it.
`Scenario.fading` names one; validation, `channel.draw_fading`, the fast-fading policies and the CLI read
the registry, and `register` adds a family (also from outside the package).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from sift_jax.errors import ConfigError
from sift_jax.records import Registry

if TYPE_CHECKING:
    from sift_jax.scenario import Scenario

__all__ = ["FadingFamily", "get", "inverse_gain_mean", "names", "register", "unregister"]


@dataclasses.dataclass(frozen=True)
class FadingFamily:
    """One fading family.

    Attributes:
        name: the value of `Scenario.fading`.
        sample: (key, sc, shape) -> float32[shape] unit-mean power gains. Draw from float32 random numbers
            so float32 and float64 runs see the same samples; static fields (e.g. `fading_shape`) may steer
            Python control flow, dynamic ones must be used as arrays.
        inverse_gain_mean: sc -> E[1/h] (a float; inf where it diverges, nan where unknown in closed form).
        dp_support: sc -> bool, whether the exact DP bit loading applies (Gamma(m) gains with m > 1).
        parameters: the Scenario fields the sampler reads (documentation and the CLI help).
        check: sc -> None, extra validation raising ConfigError (e.g. an integer shape), or None.
        description: one line for docs and help.

    Example:
        >>> get("rayleigh").parameters, get("gamma").parameters
        ((), ('fading_shape',))
    """

    name: str
    sample: Callable[[jax.Array, Scenario, tuple], jax.Array]
    inverse_gain_mean: Callable[[Scenario], float]
    dp_support: Callable[[Scenario], bool] = lambda sc: False
    parameters: tuple[str, ...] = ()
    check: Callable[[Scenario], None] | None = None
    description: str = ""


_REGISTRY: Registry[FadingFamily] = Registry("fading")


def register(family: FadingFamily, *, replace: bool = False) -> FadingFamily:
    """Add a fading family to the registry (validated; a second record of the same name is refused).

    Args:
        family: the family's record. replace: allow replacing an existing record of the same name.

    Returns:
        The record.

    Raises:
        ConfigError: a bad name, non-callable functions, or a duplicate name.

    Example:
        >>> register(get("gamma"))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: fading = 'gamma' is invalid: allowed is a name not yet registered (pass
        replace=True to replace it)
    """
    name = family.name
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ConfigError("fading", name, "a non-empty name without whitespace")
    for field in ("sample", "inverse_gain_mean", "dp_support"):
        if not callable(getattr(family, field)):
            raise ConfigError(f"{name}.{field}", getattr(family, field), "a callable")
    if family.check is not None and not callable(family.check):
        raise ConfigError(f"{name}.check", family.check, "None or a callable sc -> None")
    return _REGISTRY.add(name, family, replace)


def unregister(name: str) -> None:
    """Remove a registered fading family (e.g. a test's or a notebook's own, when done with it).

    Args:
        name: a registered name.

    Returns:
        None.

    Raises:
        ConfigError: `name` is not registered.

    Example:
        >>> unregister("never-registered")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: fading = 'never-registered' is invalid: allowed is a registered name ...
    """
    _REGISTRY.remove(name)


def names() -> tuple[str, ...]:
    """Registered family names, in registration order.

    Returns:
        tuple of str.

    Example:
        >>> names()
        ('gamma', 'rayleigh', 'nakagami', 'rician', 'lognormal')
    """
    return _REGISTRY.names()


def get(name: str) -> FadingFamily:
    """The record of fading family `name`.

    Args:
        name: one of `names()`.

    Returns:
        The `FadingFamily`.

    Raises:
        ConfigError: unknown family.

    Example:
        >>> get("nakagami").description
        'Nakagami-m: Gamma(m, 1/m) power gains, any m'
    """
    return _REGISTRY.get(name)


def inverse_gain_mean(sc: Scenario, inv_gain_mean=None) -> float:
    """E[1/h] for the fast-fading surrogate and eq. (26): `inv_gain_mean` if given, else the scenario's family's.

    Args:
        sc: the scenario (its `fading` family and parameters).
        inv_gain_mean: a finite E[1/h] > 0 to use instead (the policy option of that name), or None.

    Returns:
        E[1/h] as a float.

    Raises:
        ConfigError: an invalid `inv_gain_mean`, or a family whose E[1/h] is infinite or unknown.

    Example:
        >>> from sift_jax.scenario import Scenario
        >>> inverse_gain_mean(Scenario(fading="gamma", fading_shape=2.0))  # m / (m - 1)
        2.0
        >>> inverse_gain_mean(Scenario(fading="rayleigh"))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: fading = 'rayleigh' is invalid: allowed is ... E[1/h] is infinite for
        fading='rayleigh' ...
    """
    if inv_gain_mean is not None:
        try:
            value = float(inv_gain_mean)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigError("inv_gain_mean", inv_gain_mean, "a finite number > 0 (E[1/h] >= 1 for unit-mean gains)")
        return value
    value = float(get(sc.fading).inverse_gain_mean(sc))
    if not math.isfinite(value):
        why = "infinite" if math.isinf(value) else "not known in closed form"
        raise ConfigError(
            "fading",
            sc.fading,
            f"a family with finite E[1/h] for the fast-fading surrogate and eq. (26): E[1/h] is {why} for "
            f"fading={sc.fading!r} (shape {sc.fading_shape}); use gamma/nakagami with shape > 1, or pass a "
            f"finite inv_gain_mean=... option",
        )
    return value


def _gamma_mean_inverse(sc) -> float:
    m = float(sc.fading_shape)
    return m / (m - 1.0) if m > 1.0 else math.inf


def _gamma_sample(key, sc, shape):
    m = int(sc.fading_shape)
    u = jax.random.uniform(key, shape + (m,), jnp.float32, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    log_prod = jnp.log(u.prod(-1)) if m <= 5 else jnp.log(u).sum(-1)
    return -log_prod / m


def _gamma_check(sc) -> None:
    if float(sc.fading_shape) != int(sc.fading_shape):
        raise ConfigError(
            "fading_shape",
            sc.fading_shape,
            "an integer for fading='gamma' (drawn as a sum of exponentials); use fading='nakagami' for a non-integer m",
        )


def _rician_sample(key, sc, shape):
    k = jnp.asarray(sc.rician_k, jnp.float32)
    z = jax.random.normal(key, shape + (2,), dtype=jnp.float32)
    los = jnp.sqrt(k / (k + 1.0))
    scatter = jnp.sqrt(0.5 / (k + 1.0))
    return jnp.square(los + scatter * z[..., 0]) + jnp.square(scatter * z[..., 1])


def _lognormal_sample(key, sc, shape):
    s = jnp.asarray(sc.shadowing_db, jnp.float32) * jnp.log(10.0) / 10.0
    return jnp.exp(s * jax.random.normal(key, shape, dtype=jnp.float32) - 0.5 * s * s)


def _dp_gamma(sc) -> bool:
    return float(sc.fading_shape) > 1.0


for _family in (
    FadingFamily(
        "gamma",
        _gamma_sample,
        _gamma_mean_inverse,
        _dp_gamma,
        ("fading_shape",),
        _gamma_check,
        "Gamma(m, 1/m) power gains, integer m (the paper: m = 2), a sum of m exponentials",
    ),
    FadingFamily(
        "rayleigh",
        lambda key, sc, shape: jax.random.exponential(key, shape, dtype=jnp.float32),
        lambda sc: math.inf,
        description="exponential power gains (E[1/h] diverges)",
    ),
    FadingFamily(
        "nakagami",
        lambda key, sc, shape: jax.random.gamma(key, sc.fading_shape, shape, dtype=jnp.float32) / sc.fading_shape,
        _gamma_mean_inverse,
        _dp_gamma,
        ("fading_shape",),
        description="Nakagami-m: Gamma(m, 1/m) power gains, any m",
    ),
    FadingFamily(
        "rician",
        _rician_sample,
        lambda sc: math.inf,
        parameters=("rician_k",),
        description="Rician with K-factor rician_k (E[1/h] diverges: the density at h = 0 is positive)",
    ),
    FadingFamily(
        "lognormal",
        _lognormal_sample,
        lambda sc: math.nan,
        parameters=("shadowing_db",),
        description="log-normal shadowing with sigma shadowing_db (E[1/h]: pass inv_gain_mean)",
    ),
):
    register(_family)
