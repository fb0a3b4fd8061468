"""Channel draws and link rates (paper §1.3-§1.4, eqs. 4-5).

Distances are drawn once per sample; small-scale power gains h (unit mean) per layer and helper
(slow fading) or per layer, helper and slot (fast fading).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from sift_jax import fading as fading_families
from sift_jax.scenario import Scenario

__all__ = ["ChannelState", "draw", "draw_fading", "rates"]


@struct.dataclass
class ChannelState:
    """One channel realisation, as returned by `draw` (a pytree: vmap over samples works).

    Attributes:
        distance_m: float[N-1], user-helper distances (m).
        gain: float[L, N-1] (slow) or float[L, N-1, Q] (fast), unit-mean linear power gains.

    Example:
        >>> import jax.numpy as jnp
        >>> ch = ChannelState(distance_m=jnp.array([20.0, 80.0]), gain=jnp.ones((3, 2)))
        >>> ch.replace(gain=2 * ch.gain).gain.shape
        (3, 2)
    """

    distance_m: jax.Array
    gain: jax.Array


def per_helper(sc: Scenario, value) -> jax.Array:
    """Broadcast a scalar-or-[N-1] field to float[N-1]."""
    return jnp.broadcast_to(jnp.asarray(value, dtype=jnp.result_type(float)), (sc.n_helpers,))


def draw_distances(key: jax.Array, sc: Scenario) -> jax.Array:
    """Helper distances uniform over the annulus area between min and max distance: float[N-1] (m).

    CDF: P(d <= r) = (r^2 - dmin^2) / (dmax^2 - dmin^2).
    """
    u = jax.random.uniform(key, (sc.n_helpers,), dtype=jnp.float32).astype(_float())
    lo2, hi2 = jnp.square(sc.min_distance_m), jnp.square(sc.max_distance_m)
    return jnp.sqrt(lo2 + u * (hi2 - lo2))


def draw_fading(key: jax.Array, sc: Scenario, shape: tuple[int, ...]) -> jax.Array:
    """Unit-mean small-scale power gains of the scenario's fading family, float[*shape].

    gamma: Gamma(m, 1/m) with integer m drawn as a sum of m exponentials, -log(u_1 ... u_m)/m: one log
    per gain (a product of m <= 5 uniforms >= 2^-23 stays a normal float32; larger m sums the logs);
    nakagami: Gamma(m, 1/m) for any m (general sampler); rayleigh: Exp(1);
    rician: |LoS + scatter|^2 with K-factor `rician_k`; lognormal: exp(s Z - s^2/2), s = sigma_dB ln10/10.
    The draws always come from float32 random numbers, so float32 and float64 runs see the same samples.

    Args:
        key: a typed PRNG key.
        sc: the scenario; uses `fading`, `fading_shape`, `rician_k`, `shadowing_db`.
        shape: output shape (static), e.g. (L, N-1) or (L, N-1, Q).

    Returns:
        float[*shape] linear power gains h >= 0 with E[h] = 1 (dimensionless), default float dtype.

    Example:
        >>> import jax
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(fading="gamma", fading_shape=2.0)
        >>> h = jax.jit(draw_fading, static_argnums=2)(jax.random.key(0), sc, (20000,))
        >>> h.shape, bool((h >= 0).all()), bool(abs(h.mean() - 1.0) < 0.05)   # unit mean
        ((20000,), True, True)
    """
    return _draw_fading(key, sc, shape).astype(_float())


def _float():
    return jnp.result_type(float)


def _draw_fading(key, sc, shape):
    """The draws, always from float32 random numbers: float32 and float64 runs see the same samples."""
    return fading_families.get(sc.fading).sample(key, sc, shape)


def draw(key: jax.Array, sc: Scenario, fast: bool = False) -> ChannelState:
    """Draw distances and gains for one sample.

    Distances are uniform over the annulus area between `min_distance_m` and `max_distance_m`
    (P(d <= r) = (r^2 - dmin^2) / (dmax^2 - dmin^2)); gains come from `draw_fading`.

    Args:
        key: a typed PRNG key.
        sc: the scenario (static dims set the shapes).
        fast: per-slot gains [L, N-1, Q] (fast fading) instead of per-layer gains [L, N-1].

    Returns:
        ChannelState: distance_m float[N-1] (m); gain float[L, N-1] or, with `fast`, float[L, N-1, Q]
        (unit-mean linear power gains).

    Example:
        >>> import jax
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=4, n_layers=2, n_slots=5)
        >>> ch = jax.jit(draw)(jax.random.key(0), sc)     # jitted, as in the simulator (or call it eagerly)
        >>> ch.distance_m.shape, ch.gain.shape
        ((3,), (2, 3))
        >>> bool(((ch.distance_m >= sc.min_distance_m) & (ch.distance_m <= sc.max_distance_m)).all())
        True
        >>> jax.eval_shape(lambda k: draw(k, sc, fast=True), jax.random.key(0)).gain.shape   # [L, N-1, Q]
        (2, 3, 5)
    """
    k_dist, k_fade = jax.random.split(key)
    shape = (sc.n_layers, sc.n_helpers) + ((sc.n_slots,) if fast else ())
    return ChannelState(distance_m=draw_distances(k_dist, sc), gain=draw_fading(k_fade, sc, shape))


def path_gain(sc: Scenario, distance_m: jax.Array) -> jax.Array:
    """Large-scale path gain d^-alpha (linear), same shape as `distance_m`."""
    return jnp.power(distance_m, -jnp.asarray(sc.pathloss_exponent, distance_m.dtype))


def uplink_snr_per_watt(sc: Scenario, distance_m: jax.Array, gain: jax.Array) -> jax.Array:
    """Uplink SNR per watt of user transmit power, d^-alpha G_UE,n h / (N0 B_n): float[..., N-1] (1/W)."""
    bw = per_helper(sc, sc.bandwidth_hz)
    return path_gain(sc, distance_m) * sc.gain_up * gain / (sc.noise_psd_w_per_hz * bw)


def rates(sc: Scenario, distance_m: jax.Array, gain: jax.Array, uplink_power_w=None):
    """Uplink and downlink rates, eqs. (4)-(5), in bit/s.

    R = B_n log2(1 + P d^-alpha G h / (N0 B_n)), with P = `uplink_power_w` and G = `gain_up` on the
    uplink, P = `helper_power_w` and G = `gain_down` on the downlink.

    Args:
        sc: the scenario (bandwidth_hz in Hz, powers in W, noise_psd_w_per_hz in W/Hz).
        distance_m: float[N-1] (m).
        gain: float[..., N-1] power gains (the same h in both directions, as in the paper).
        uplink_power_w: user transmit power (W), scalar or broadcastable to float[..., N-1];
            default `sc.max_tx_power_w` (inf gives an infinite rate).

    Returns:
        (r_up, r_dn): float[..., N-1] each, bit/s.

    Example:
        >>> import jax.numpy as jnp
        >>> from sift_jax.scenario import Scenario
        >>> sc = Scenario(n_nodes=2, bandwidth_hz=1e6, noise_psd_w_per_hz=1e-12, helper_power_w=1.0,
        ...               pathloss_exponent=0.0, max_tx_power_w=1.0)
        >>> r_up, r_dn = rates(sc, jnp.array([100.0]), jnp.array([1.0]))
        >>> float(r_dn[0]) / 1e6   # B log2(1 + 1 / (1e-12 * 1e6)) = 1e6 * log2(1e6 + 1)
        19.93...
        >>> bool(r_up[0] == r_dn[0])   # same power (1 W) and antenna factors both ways
        True
        >>> rates(sc.replace(max_tx_power_w=float("inf")), jnp.array([100.0]), jnp.array([1.0]))[0]
        Array([inf], dtype=float32)
    """
    p_up = sc.max_tx_power_w if uplink_power_w is None else uplink_power_w
    bw = per_helper(sc, sc.bandwidth_hz)
    pg = path_gain(sc, distance_m)
    snr_dn = sc.helper_power_w * pg * sc.gain_down * gain / (sc.noise_psd_w_per_hz * bw)
    r_dn = bw * jnp.log2(1.0 + snr_dn)
    r_up = bw * jnp.log2(1.0 + p_up * uplink_snr_per_watt(sc, distance_m, gain))
    return r_up, r_dn
