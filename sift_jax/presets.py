"""Paper presets: switch-base-8 (XSum), Mixtral-8x7B (CommonsenseQA), GPT-OSS-20B (GSM8K), in two regimes.

- `switch-base-8`, `mixtral-8x7b`, `gpt-oss-20b` (the paper's regime; what `sift-jax reproduce` uses): the
  data-sheet presets below with the constants the paper omits fitted to its figures (`sift_jax.fit`,
  `sift-jax fit-paper`; README "Calibration to the paper"):

  | preset | fitted on | M | uplink loss at 1 m | P_UE,load | log residuals (level, fall) |
  |---|---|---|---|---|---|
  | switch-base-8 | Fig. 5(a) fall; level of 3(b), 5(a), 5(b) | 384 | 42.8 dB | 100 W (kept) | +0.01, -0.26 |
  | mixtral-8x7b | Fig. 6(b) fall; level of 4(b), 6(a), 6(b) | 24 | 30.0 dB (edge) | 9 W | +0.29, +0.21 |
  | gpt-oss-20b | not fitted: Mixtral's radio and user-side constants | 128 | 30.0 dB | 9 W | - |

  (`sift-jax fit-paper --samples 2000`, seed 0, every layer simulated; 2 min per model on 2 CPU cores.)
  Mixtral's mismatch-table scale is fitted too (`sift-jax fit-paper --table --model mixtral-8x7b --samples 200`,
  12 min): output_norm 4 -> 19.5, so that SiftMoE falls across Fig. 4(b) by the plotted 0.8 -> 0.5 J (0.625;
  0.662 at the fitted scale, direct run). switch-base-8 keeps 250: the same fit on Fig. 3(b) asks for 472, at
  which SiftMoE at eta = 200 equals Top-1 (0.057 J vs 0.057 J at 0.9 MHz), contradicting Fig. 5(a), where it is
  "well below" (README, "Calibration to the paper").
  Out of sample (README, Gallery): every switch-base-8 Top-1 and fast-fading claim holds, SiftMoE's falls with T
  are 21-22% (below the 30% bar); Mixtral's Top-2 lands in the paper's ranges but is tail-dominated, and its
  SiftMoE (55% uplink at the default with the fitted table scale) falls 49-88% across Figs. 6 and 8, its
  Dynamic/Uniform ratios (0.74-0.93) hold at every point on paired differences, while its "below Top-2"
  ratios (0.5-0.95) have overlapping (independent) CIs at 200 samples.

  The loss applies to the uplink (gain_up = 10^(-dB/10)); the downlink keeps the paper's factor 1.
- `*-4090` (data-sheet regime): every omitted value from public configs and GPU data sheets, with the
  paper's antenna factor 1 on both links. There the uplink costs ~1e-9 J per token and the user's own
  expert sets the energy, so the radio barely matters: energy is flat in B and T (a real result for a
  4090-class user next to its helpers, and why the paper's regime needed the fit).

Radio values are the paper's (§5.1): helper power 38 dBm, alpha = 4, antenna factors 1, N0 = -174 dBm/Hz,
Gamma(2, 1/2) fading, helpers within 150 m. The paper's per-figure defaults set B_n, T and eta.
Everything the paper omits comes from public model configs and GPU data sheets (sources below and in
the README's defaults table); where a number is our assumption it says so.

Compute side (all presets): user and helpers are RTX 4090-class GPUs (the paper measured on a 4090),
effective throughput 40% of the data-sheet dense peak for batch-1 expert GEMMs (our assumption),
experts loaded over PCIe Gen4 x16 at 25 GB/s effective, board power 100 W while loading and
300 W while computing (4090 TGP is 450 W; our assumption).
"""

from __future__ import annotations

from sift_jax.errors import ConfigError
from sift_jax.scenario import Scenario, validate
from sift_jax.units import dbm_to_w

__all__ = ["FITTED", "get", "names"]

_PCIE_BYTES_PER_S = 25e9  # PCIe Gen4 x16, effective
_RADIO = dict(
    helper_power_w=dbm_to_w(38.0),  # paper §5.1 (from SlimCaching [15])
    noise_psd_w_per_hz=dbm_to_w(-174.0),  # paper §5.1
    pathloss_exponent=4.0,  # paper §5.1
    gain_up=1.0,
    gain_down=1.0,  # paper: antenna-related factor 1
    fading="gamma",
    fading_shape=2.0,  # paper: Gamma, unit mean, shape 2
    min_distance_m=10.0,  # assumption: no helper closer than 10 m
    max_distance_m=150.0,  # paper: maximal user-helper distance 150 m
    user_load_power_w=100.0,  # assumption (board power while streaming weights)
    user_compute_power_w=300.0,  # assumption (4090 under load, TGP 450 W)
)


def _switch_base_8() -> Scenario:
    """switch-base-8 on XSum, Top-1 (paper Figs. 3, 5, 7).

    - b = 768 x 32 bit = 24,576 bit (d_model 768, FP32 checkpoint; HF google/switch-base-8 config).
    - phi = 2 x 2 x 768 x 3072 = 9.44e6 FLOP per token (two dense matrices, d_ff 3072).
    - L = 12 MoE layers (every other FFN of 12 encoder + 12 decoder blocks is sparse).
    - M = 256 prompt tokens (XSum articles are ~430 words; truncated here to keep the exact prefill
      solver fast; assumption).
    - Expert weights 2 x 768 x 3072 x 4 B = 18.9 MB -> 0.75 ms over PCIe (user and helpers).
    - C = 0.4 x 82.6 TFLOP/s (4090 FP32) = 33 TFLOP/s.
    - B_n = 1 MHz, T = 0.7 s, eta = 200 (paper); tau = 10 ms slots (assumption), Q <= 80.
    """
    load_s = 2 * 768 * 3072 * 4 / _PCIE_BYTES_PER_S
    return Scenario(
        n_nodes=8,
        top_k=1,
        n_tokens=256,
        n_layers=12,
        n_slots=80,
        **_RADIO,
        bandwidth_hz=1e6,
        deadline_s=0.7,
        eta=200.0,
        hidden_bits=768 * 32.0,
        expert_flops=2 * 2 * 768 * 3072.0,
        user_flops_per_s=0.4 * 82.6e12,
        helper_flops_per_s=0.4 * 82.6e12,
        user_load_time_s=load_s,
        helper_load_time_s=load_s,
        slot_s=10e-3,
        output_norm=250.0,
        output_norm_sigma=0.3,
        intra_cluster_cosine=0.9,
        n_clusters=4,
    )


def _mixtral_8x7b() -> Scenario:
    """Mixtral-8x7B on CommonsenseQA, Top-2 (paper Figs. 4, 6, 8).

    - b = 4096 x 16 bit = 65,536 bit (d_model 4096, BF16; matches the paper's v2 example).
    - phi = 2 x 3 x 4096 x 14336 = 3.52e8 FLOP per token (SwiGLU, d_ff 14336).
    - L = 32 MoE layers; M = 32 prompt tokens (a CSQA question with its five choices is ~30-60 tokens;
      32 puts practical Top-2 at 2.8 J/token median, 4.4 J mean, inside the paper's Fig. 6a range "up to
      6 J"; at M = 48 helpers overflow their deadline capacity and Top-2 loses 32% of tasks).
    - Expert load 27.35 ms (paper v2: one expert into an A100 over PCIe Gen4), user and helpers.
    - C = 0.4 x 165 TFLOP/s (4090 BF16 tensor, dense) = 66 TFLOP/s.
    - B_n = 2 MHz, T = 0.074 s, eta = 1.5 (paper); tau = 1 ms slots (assumption), Q <= 80.
    """
    return Scenario(
        n_nodes=8,
        top_k=2,
        n_tokens=32,
        n_layers=32,
        n_slots=80,
        **_RADIO,
        bandwidth_hz=2e6,
        deadline_s=0.074,
        eta=1.5,
        hidden_bits=4096 * 16.0,
        expert_flops=2 * 3 * 4096 * 14336.0,
        user_flops_per_s=0.4 * 165e12,
        helper_flops_per_s=0.4 * 165e12,
        user_load_time_s=27.35e-3,
        helper_load_time_s=27.35e-3,
        slot_s=1e-3,
        output_norm=4.0,
        output_norm_sigma=0.3,
        intra_cluster_cosine=0.9,
        n_clusters=4,
    )


def _gpt_oss_20b() -> Scenario:
    """GPT-OSS-20B on GSM8K, Top-4 of 32 experts (paper v2).

    - b = 2880 x 16 bit = 46,080 bit (d_model 2880, BF16 activations; public config).
    - phi = 2 x 3 x 2880 x 2880 = 4.98e7 FLOP per token (SwiGLU, expert d_ff 2880).
    - L = 24 MoE layers; M = 128 prompt tokens (a GSM8K question; assumption).
    - Expert weights 3 x 2880 x 2880 x 4.25 bit (MXFP4) = 13.2 MB -> 0.53 ms over PCIe.
    - C = 66 TFLOP/s as for Mixtral.
    - B_n = 0.8 MHz, T = 0.35 s, eta = 30 (paper v2); tau = 5 ms slots (assumption), Q <= 80.
    """
    load_s = 3 * 2880 * 2880 * 4.25 / 8 / _PCIE_BYTES_PER_S
    return Scenario(
        n_nodes=32,
        top_k=4,
        n_tokens=128,
        n_layers=24,
        n_slots=80,
        **_RADIO,
        bandwidth_hz=0.8e6,
        deadline_s=0.35,
        eta=30.0,
        hidden_bits=2880 * 16.0,
        expert_flops=2 * 3 * 2880 * 2880.0,
        user_flops_per_s=0.4 * 165e12,
        helper_flops_per_s=0.4 * 165e12,
        user_load_time_s=load_s,
        helper_load_time_s=load_s,
        slot_s=5e-3,
        output_norm=100.0,
        output_norm_sigma=0.3,
        intra_cluster_cosine=0.9,
        n_clusters=8,
    )


# The paper's regime: constants fitted by `sift_jax.fit` (`sift-jax fit-paper --samples 2000`, seed 0);
# gain_up = 10^(-loss_dB / 10) is the uplink's path-loss reference at 1 m.
FITTED = {
    "switch-base-8": dict(n_tokens=384, gain_up=10.0 ** (-42.8 / 10)),
    "mixtral-8x7b": dict(
        n_tokens=24, gain_up=10.0 ** (-30.0 / 10), user_load_power_w=9.0, output_norm=19.5
    ),  # table scale: `sift-jax fit-paper --table` on Fig. 4(b)
    "gpt-oss-20b": dict(gain_up=10.0 ** (-30.0 / 10), user_load_power_w=9.0),  # Mixtral's, not fitted
}
_DATASHEET = {"switch-base-8": _switch_base_8, "mixtral-8x7b": _mixtral_8x7b, "gpt-oss-20b": _gpt_oss_20b}
_PRESETS = {name: (lambda make=make, name=name: make().replace(**FITTED[name])) for name, make in _DATASHEET.items()}
_PRESETS.update({f"{name}-4090": make for name, make in _DATASHEET.items()})


def names() -> tuple[str, ...]:
    """Preset names: the paper's regime (fitted) for each model, then the data-sheet (`-4090`) ones.

    Returns:
        tuple[str, ...]: the names `get` accepts.

    Example:
        >>> names()
        ('switch-base-8', 'mixtral-8x7b', 'gpt-oss-20b', 'switch-base-8-4090', 'mixtral-8x7b-4090', 'gpt-oss-20b-4090')
    """
    return tuple(_PRESETS)


def get(name: str) -> Scenario:
    """A validated preset Scenario by name; unknown names raise `ConfigError`.

    Each call builds a fresh Scenario; change fields with the validated `Scenario.replace`.

    Args:
        name: one of `names()`.

    Returns:
        Scenario: the preset (paper values, SI units; see the module docstring for the sources).

    Raises:
        ConfigError: `name` is not a preset.

    Example:
        >>> sc = get("mixtral-8x7b")
        >>> sc.n_nodes, sc.top_k, sc.hidden_bits == 4096 * 16   # Top-2 of 8, d_model 4096 in BF16
        (8, 2, True)
        >>> sc.replace(n_tokens=1, n_layers=1).n_tokens
        1
        >>> get("gpt-5")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: preset = 'gpt-5' is invalid: allowed is one of switch-base-8, mixtral-8x7b, ...
    """
    if name not in _PRESETS:
        raise ConfigError("preset", name, f"one of {', '.join(_PRESETS)}")
    return validate(_PRESETS[name]())
