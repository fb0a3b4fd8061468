"""How tight are the paper's bounds on a real trained MoE, and what does SiftMoE cost in accuracy?

Setting (decoding, slow fading). Every test token is decoded as its own M = 1 instance: for channel
draw c and token m a channel is drawn with ``fold_in(fold_in(key(seed), c), m)`` (`sift_jax.channel.draw`:
helper distances, one gain per layer and helper), giving node costs f [L, N] (`sift_jax.costs.node_costs`).
At every MoE layer the policy sees that layer's own gates and Top-K (computed from the possibly
already perturbed hidden state), the layer's calibration table Fbar and f, and picks the node per Top-K
slot; the model applies it with eq. (12) (`MoELM(select_fn=...)`). Policies:

- ``siftmoe``: `sift_jax.policies.decode` (Theorem 2) at each eta of the grid. Where it finds no
  feasible selection, `infeasible_fallback` decides: "topk" (default: send what the practical Top-K
  would send, i.e. keep the Top-K experts whose nodes meet the deadline) or "skip" (skip the layer:
  every slot -1, as the Decision reports, and all K slots counted as skipped, since the model skips
  them). The infeasible rate is reported either way.
- ``topk-ideal``: every Top-K expert delivered (the unmodified model).
- ``topk``: practical Top-K, outputs of nodes that miss the deadline are lost (`policies.topk`).

Measurements (all per token and layer, at the perturbed run's own layer input z~):

(a) Prop. 1: actual delta = ||y~(z~) - y_Top(z~)|| from the model's outputs, against the bound with
    the exact per-token mismatch F_{i,phi(i)}(z~) = ||FFN_i(z~) - FFN_phi(i)(z~)|| (skip: ||FFN_i||)
    -- by the triangle inequality the ratio can never exceed 1 -- and against the calibrated-table
    bound sum_i g_i Fbar[i, phi(i)] (an estimate: ratio median, p90, max). Tokens whose selection is
    the identity (bound 0, delta 0) are left out of the ratios.
(b) Thm. 1: e^(l) = ||y~^(l)(z~^(l)) - y_Top^(l)(z^(l))|| (MoE-layer output of the perturbed run
    against the clean run) against `sift_jax.bounds.final_bound(delta, B_max, beta_max)` with the
    measured per-layer delta and the calibrated B_max^(l) = max_i B_i, beta_max^(l). Note (INFERRED):
    in a transformer the input of MoE layer l is not the output of layer l-1 (residual stream,
    attention, LayerNorm), so the chain model of the theorem does not hold literally; but as long as
    the calibrated B_max bounds the outputs, e^(l) <= ||y~|| + ||y|| <= 2 B_max^(l) <= bound^(l), so
    the bound holds up to how well B_max was estimated, and the ratio mostly measures its looseness.
(c) next-byte loss and accuracy on the test split against eta (analogue of Figs. 3a/4a), and every
    registered metric record (`sift_jax.metrics`: energy per token and its uplink/local split, J; Figs.
    3b/4b; deviation bound, replace/skip/infeasible rates, latency), computed by the same record functions
    as `simulate`: each test token is one M = 1 task of L layers, its latency and uplink energy from its
    channel (`metrics.layer_latency_and_uplink`). The lab always executes a selection (SiftMoE's or the
    fallback's), so every token counts in every average, as for a baseline in `simulate`;
    infeasible_rate is the fraction of tokens with an infeasible layer, and `infeasible_layer_rate` the
    finer fraction of (token, layer) decisions.

Vectorisation: one jitted call per batch of test windows runs every (eta, draw) pair of SiftMoE and
every draw of the baselines with `lax.map` (batched vmap) over the grid. Figures on the default model
(bound ratios, accuracy and energy against eta): BENCHMARKS.md ("MoE lab").

The eta grid defaults to fractions of `eta_scale` = the mean over layers and experts of the skip
column Fbar[:, i, N] (the mean expert-output norm), since the deviation of skipping a whole token's
Top-K set is about that much (gates sum to 1). Pass `etas` for absolute values.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sift_jax import bounds, channel, costs, policies
from sift_jax import metrics as metric_records
from sift_jax import presets as presets_lib
from sift_jax.errors import ConfigError
from sift_jax.moe import data as data_lib
from sift_jax.moe.model import MoEConfig, MoELM, combine
from sift_jax.scenario import Scenario

__all__ = ["TightnessConfig", "lab_scenario", "run"]

DEFAULT_ETA_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
LAB_BASELINES = ("topk-ideal", "topk")
FALLBACKS = ("topk", "skip")
# Relative tolerance of the "never exceeds 1" check of Prop. 1 with exact F (float32 rounding).
PROP1_RTOL = 1e-5


def lab_scenario(cfg: MoEConfig, preset: str = "mixtral-8x7b", **overrides) -> Scenario:
    """The decoding scenario of the lab: a preset with N, K, L set from the model and M = 1.

    Defaults (INFERRED, a documented choice): the Mixtral-8x7B radio and compute numbers (the paper-fitted
    preset), with a user transmit-power cap of 0.2 W (23 dBm, 3GPP power class 3) and B_n = 130 kHz per
    helper, so that about 15% of helper links miss the 74 ms deadline in a layer (at 80 kHz 91% do; with
    the preset's 2 MHz and no cap none does, and practical Top-K would equal ideal Top-K). Override any
    Scenario field by keyword.

    Args:
        cfg: the model configuration (gives N = n_experts, K = top_k, L = n_layers).
        preset: name of a `sift_jax.presets` scenario (radio and compute numbers).
        **overrides: Scenario fields (SI units, see `sift_jax.scenario`) that replace the defaults.

    Returns:
        Scenario with n_nodes = N, top_k = K, n_layers = L and n_tokens = 1.

    Example:
        >>> from sift_jax.moe.model import tiny_config
        >>> sc = lab_scenario(tiny_config())
        >>> sc.n_nodes, sc.top_k, sc.n_layers, sc.n_tokens
        (4, 2, 2, 1)
        >>> sc.max_tx_power_w, sc.bandwidth_hz, lab_scenario(tiny_config(), eta=0.5).eta     # W, Hz
        (0.2, 130000.0, 0.5)
    """
    base = presets_lib.get(preset)
    fields = dict(n_nodes=cfg.n_experts, top_k=cfg.top_k, n_layers=cfg.n_layers, n_tokens=1)
    if preset == "mixtral-8x7b":
        fields.update(max_tx_power_w=0.2, bandwidth_hz=1.3e5)
    fields.update(overrides)
    return base.replace(**fields)


@dataclasses.dataclass(frozen=True)
class TightnessConfig:
    """Settings of `run`.

    Attributes:
        n_windows: test windows of `context` bytes (evenly spaced over the test split).
        batch_windows: windows per jitted call.
        n_draws: channel draws per token (C).
        eta_fractions: grid as fractions of `eta_scale` (used when `etas` is None).
        etas: absolute eta grid (overrides `eta_fractions`).
        seed: channel PRNG seed.
        infeasible_fallback: "topk" or "skip" (see the module docstring).
        share_substitutes: SiftMoE option (two slots may share a substitute, eq. 12).
        grid_batch: runs vmapped together inside `lax.map` over the (eta, draw) grid (memory ~
            grid_batch * L * batch_windows * context * N * d floats; raise it on a GPU).

    Example:
        >>> tc = TightnessConfig(n_windows=8, n_draws=2)
        >>> len(tc.eta_fractions) * tc.n_draws           # SiftMoE runs: one per (eta, draw)
        18
        >>> TightnessConfig(infeasible_fallback="drop")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: infeasible_fallback = 'drop' is invalid: allowed is one of topk, skip
    """

    n_windows: int = 32
    batch_windows: int = 8
    n_draws: int = 4
    eta_fractions: tuple = DEFAULT_ETA_FRACTIONS
    etas: tuple | None = None
    seed: int = 0
    infeasible_fallback: str = "topk"
    share_substitutes: bool = True
    grid_batch: int = 4

    def __post_init__(self):
        for name in ("n_windows", "batch_windows", "n_draws"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "a positive integer")
        if self.infeasible_fallback not in FALLBACKS:
            raise ConfigError("infeasible_fallback", self.infeasible_fallback, "one of topk, skip")
        grid = self.etas if self.etas is not None else self.eta_fractions
        if len(grid) < 1 or any((not np.isfinite(e)) or e < 0 for e in grid):
            raise ConfigError("etas", grid, "a non-empty list of finite numbers >= 0")


def eta_scale(table: np.ndarray) -> float:
    """Mean skip cost Fbar[l, i, N] over layers and experts (the mean expert-output norm)."""
    table = np.asarray(table)
    return float(table[:, :, -1].mean())


def token_channels(sc: Scenario, key: jax.Array, n_tokens: int) -> tuple:
    """Channels and node costs of `n_tokens` independent decoding instances.

    Token m uses `channel.draw(fold_in(key, m), sc)` (distances and per-layer gains).

    Returns:
        (f float[n_tokens, L, N] node costs (J; inf = infeasible), distance_m float[n_tokens, N-1] (m),
        gain float[n_tokens, L, N-1]).
    """

    def one(m):
        ch = channel.draw(jax.random.fold_in(key, m), sc)
        return jax.vmap(lambda g: costs.node_costs(sc, ch.distance_m, g))(ch.gain), ch.distance_m, ch.gain

    return jax.vmap(one)(jnp.arange(n_tokens))


_channel_fn = jax.jit(token_channels, static_argnums=2)


def _norm(x):
    sq = jnp.sum(jnp.square(x), axis=-1)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def exact_f_bound(outputs: jax.Array, gates: jax.Array, topk: jax.Array, assign: jax.Array) -> jax.Array:
    """Prop. 1 bound with the exact per-token mismatch: sum_k g_k ||FFN_{topk_k}(z) - FFN_{assign_k}(z)||,
    a skip (-1) counting ||FFN_{topk_k}(z)||.

    Args:
        outputs: float[..., N, d]. gates: float[..., K]. topk, assign: int[..., K].

    Returns:
        float[...].

    >>> o = jnp.array([[3.0, 0.0], [0.0, 4.0]])
    >>> float(exact_f_bound(o, jnp.array([0.5, 0.5]), jnp.array([0, 1]), jnp.array([1, -1])))
    4.5
    """
    n = outputs.shape[-2]
    ext = jnp.concatenate([outputs, jnp.zeros_like(outputs[..., :1, :])], axis=-2)
    cols = jnp.where(assign < 0, n, assign)
    sub = jnp.take_along_axis(ext, cols[..., None], axis=-2)
    orig = jnp.take_along_axis(outputs, topk[..., None], axis=-2)
    return jnp.sum(gates * _norm(sub - orig), axis=-1)


def _decide(name: str, sc: Scenario, f, g, tk, table, fallback: str, share: bool):
    """Vectorised policy call over [b, T] tokens: the executed `Decision` per token (fields [b, T, ...]).

    Where SiftMoE finds no selection, the executed one is the fallback's, flagged infeasible: practical
    Top-K's ("topk") or every slot skipped ("skip", counted as K skipped slots)."""
    if name == "siftmoe":

        def pol(fv, gv, tv):
            d = policies.decode(sc, fv, gv, tv, table, share_substitutes=share)
            if fallback == "topk":
                alt = policies.topk(sc, fv, gv, tv, table)
                return jax.tree.map(lambda a, b: jnp.where(d.feasible, a, b), d, alt.replace(feasible=d.feasible))
            return d.replace(n_skipped=jnp.where(d.feasible, d.n_skipped, sc.top_k).astype(jnp.int32))
    else:

        def pol(fv, gv, tv):
            return policies.get(name)(sc, fv, gv, tv, table)

    d = jax.vmap(jax.vmap(pol))(f, g, tk)
    return d


def _token_metrics(sc: Scenario, decisions: list, distance_m, gain, metric_names: tuple) -> tuple[dict, dict]:
    """The metric records (`sift_jax.metrics`) of [b, T] tokens, each one M = 1 task of L layers.

    decisions: the L executed per-layer `Decision`s (fields [b, T, ...]); distance_m float[b, T, N-1] (m),
    gain float[b, T, L, N-1]. Every token executed a selection (SiftMoE's or the fallback's), so
    over="executed" metrics count every token, as for baselines in `simulate`.

    Returns:
        ({name: sum of the valid per-token values}, {name: number of valid tokens}).
    """
    latency, uplink = [], []
    for l, d in enumerate(decisions):
        helper = costs.helper_energy(sc, distance_m, gain[..., l, :], d.loads[..., 1:])
        lat, up = metric_records.layer_latency_and_uplink(sc, distance_m, gain[..., l, :], d.loads, helper)
        latency.append(lat)
        uplink.append(up)
    dec = jax.tree.map(lambda *xs: jnp.stack(xs, axis=2), *decisions)  # [b, T, L, ...]
    dec = dec.replace(assign=dec.assign[..., None, :], deviation_bound=dec.deviation_bound[..., None])  # M = 1

    def one(d, lat, up):
        return metric_records.evaluate(metric_records.TaskOutcome(sc, d, lat, up), jnp.bool_(True), metric_names)

    values = jax.vmap(jax.vmap(one))(dec, jnp.stack(latency, -1), jnp.stack(uplink, -1))
    sums = {k: jnp.sum(jnp.where(ok, v, 0.0)) for k, (v, ok) in values.items()}
    return sums, {k: jnp.sum(ok) for k, (_, ok) in values.items()}


@functools.lru_cache(maxsize=8)
def _make_batch_fn(graphdef, cfg: MoEConfig, tc: TightnessConfig, n_eta: int, metric_names: tuple):
    """Jitted (params, x, y, (costs [C, b, T, L, N], distances [C, b, T, N-1], gains [C, b, T, L, N-1]),
    etas [E], table, b_max [L], beta [L], sc) -> results.

    Cached per (model structure, settings, metric records); the scenario is an argument (its static fields
    are part of the jit cache key), so runs that differ only in numeric scenario fields share one compilation.
    """
    n_layers = cfg.n_layers

    def run_one(params, x, y, channels, eta, table, b_max, beta, sc, name, clean_y):
        f, dist, gain = channels
        model = nnx.merge(graphdef, params)
        sc_e = dataclasses.replace(sc, eta=eta)
        rec = []

        def select_fn(l, g, tk, z):
            d = _decide(name, sc_e, f[:, :, l], g, tk, table[l], tc.infeasible_fallback, tc.share_substitutes)
            rec.append(d)
            return d.assign

        logits, aux = model(x, select_fn=select_fn, return_internals=True)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), y[..., None], -1)[..., 0]
        correct = jnp.argmax(logits, -1) == y
        outs, g, tk, sel = aux["expert_outputs"], aux["gates"], aux["topk"], aux["selection"]
        y_top = combine(outs, g, tk)  # y_Top(z~) at the perturbed input, [L, b, T, d]
        delta = _norm(aux["moe_outputs"] - y_top)  # [L, b, T]
        bound_f = exact_f_bound(outs, g, tk, sel)
        bound_t = jnp.stack([bounds.layer_bound(g[l], tk[l], sel[l], table[l]) for l in range(n_layers)])
        e = _norm(aux["moe_outputs"] - clean_y)  # Thm. 1 e^(l) against the clean run
        thm1 = bounds.final_bound(jnp.moveaxis(delta, 0, -1), b_max, beta)  # [b, T, L]
        thm1_t = bounds.final_bound(jnp.moveaxis(bound_t, 0, -1), b_max, beta)
        metric_sum, metric_n = _token_metrics(sc_e, rec, dist, gain, metric_names)
        return {
            "ce_sum": ce.sum(),
            "correct": correct.sum(),
            "infeasible_layers": sum((~d.feasible).sum() for d in rec),
            "metric_sum": metric_sum,
            "metric_n": metric_n,
            "delta": delta,
            "bound_f": bound_f,
            "bound_t": bound_t,
            "e": e,
            "thm1": jnp.moveaxis(thm1, -1, 0),
            "thm1_t": jnp.moveaxis(thm1_t, -1, 0),
        }

    def batch_fn(params, x, y, channels, etas, table, b_max, beta, sc):
        model = nnx.merge(graphdef, params)
        _, aux0 = model(x, return_internals=True)
        clean_y = aux0["moe_outputs"]
        n_draws = channels[0].shape[0]
        # SiftMoE over the (eta, draw) grid
        ei, ci = jnp.meshgrid(jnp.arange(n_eta), jnp.arange(n_draws), indexing="ij")
        grid = (ei.ravel(), ci.ravel())

        def draw(c):
            return jax.tree.map(lambda a: a[c], channels)

        def sift(idx):
            return run_one(params, x, y, draw(idx[1]), etas[idx[0]], table, b_max, beta, sc, "siftmoe", clean_y)

        res = {"siftmoe": jax.lax.map(sift, grid, batch_size=tc.grid_batch)}
        for name in LAB_BASELINES:

            def base(c, name=name):
                return run_one(params, x, y, draw(c), etas[0], table, b_max, beta, sc, name, clean_y)

            res[name] = jax.lax.map(base, jnp.arange(n_draws), batch_size=tc.grid_batch)
        return res

    return jax.jit(batch_fn)


def _quantiles(r: np.ndarray) -> dict:
    if r.size == 0:
        return {"n": 0, "median": None, "p90": None, "max": None, "mean": None}
    return {
        "n": int(r.size),
        "median": float(np.median(r)),
        "p90": float(np.quantile(r, 0.9)),
        "max": float(r.max()),
        "mean": float(r.mean()),
    }


def run(
    model: MoELM,
    table: np.ndarray,
    b_max: np.ndarray,
    beta_max: np.ndarray,
    tokens: np.ndarray,
    sc: Scenario | None = None,
    tc: TightnessConfig = TightnessConfig(),
    progress=None,
) -> dict:
    """Measure (a) Prop. 1 tightness, (b) Thm. 1 tightness and (c) accuracy / energy against eta.

    Args:
        model: trained `MoELM`. table: float[L, N, N+1] calibration tables (`calibrate.load_tables`).
        b_max: float[L] (or [L, N], max taken) calibrated B_max. beta_max: float[L] calibrated beta_max.
        tokens: uint8[n] test split. sc: decoding scenario (default `lab_scenario(model.cfg)`).
        tc: settings. progress: optional callback(done_windows, total_windows).

    Returns:
        dict (JSON-ready except "ratios", which holds NumPy arrays for plotting, Top-K's as "topk_delta" and
        "topk_bound_f"):
        "etas" [E]; "accuracy", "loss", "infeasible_layer_rate" and every metric of `sift_jax.metrics.names()`
        (e.g. "energy_per_token_j", "replace_rate", "infeasible_rate"): {"siftmoe": [E] (mean over draws),
        "siftmoe_per_draw": [E][C], "topk-ideal": float, "topk-ideal_per_draw": [C], "topk": float,
        "topk_per_draw": [C]}; "metric_records": {name: {"unit", "label", "over"}};
        "prop1_exact": {"max_ratio", "n", "n_violations", ...};
        "prop1_table": {"all": quantiles, "per_eta": [...]}; "thm1": quantiles of e^(L) / bound^(L)
        (measured delta and table delta), "thm1_violations"; "n_tokens"; "settings".
        Accuracies are fractions of next bytes, losses nats/byte, energies J per token, etas in the
        units of the table (expert-output norms).

    Raises:
        ConfigError: a table that is not [L, N, N+1] for the model, or a scenario whose N, K, L differ
            from the model's.

    Example:
        On a trained and calibrated checkpoint `ckpt` (written by ``sift-jax moe train`` and ``sift-jax
        moe calibrate``). The run is skipped in the doctests: it compiles the model under every policy,
        about a minute of CPU time (`tests/test_moe_lab.py` and `quick_lab` run it).

        >>> from sift_jax.moe import calibrate, train
        >>> model, _ = train.load_checkpoint(ckpt)  # doctest: +SKIP
        >>> cal = calibrate.load_calibration(ckpt)  # doctest: +SKIP
        >>> res = run(model, cal["table"], cal["b_max"], cal["beta_max"], tokens,  # doctest: +SKIP
        ...           tc=TightnessConfig(n_windows=8, n_draws=2))
        >>> res["prop1_exact"]["n_violations"], len(res["accuracy"]["siftmoe"])  # doctest: +SKIP
        (0, 9)

        A table that does not fit the model is refused before anything runs (here with the model's
        shapes only, `nnx.eval_shape`):

        >>> from sift_jax.moe.model import init_model, tiny_config
        >>> abstract = nnx.eval_shape(lambda: init_model(tiny_config()))      # L = 2, N = 4
        >>> run(abstract, np.ones((2, 4, 4)), np.ones(2), np.ones(2), np.zeros(1000, np.uint8))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: table = 'array of shape (2, 4, 4)' is invalid: allowed is float[L=2, N=4, N+1=5]
    """
    cfg = model.cfg
    table = np.asarray(table, np.float32)
    if table.shape != (cfg.n_layers, cfg.n_experts, cfg.n_experts + 1):
        raise ConfigError(
            "table",
            f"array of shape {table.shape}",
            f"float[L={cfg.n_layers}, N={cfg.n_experts}, N+1={cfg.n_experts + 1}]",
        )
    b_max = np.asarray(b_max, np.float32)
    b_max = b_max.max(-1) if b_max.ndim == 2 else b_max
    beta_max = np.asarray(beta_max, np.float32)
    sc = lab_scenario(cfg) if sc is None else sc
    if (sc.n_nodes, sc.top_k, sc.n_layers) != (cfg.n_experts, cfg.top_k, cfg.n_layers):
        raise ConfigError(
            "scenario",
            f"N={sc.n_nodes}, K={sc.top_k}, L={sc.n_layers}",
            f"n_nodes={cfg.n_experts}, top_k={cfg.top_k}, n_layers={cfg.n_layers} (the model's)",
        )
    scale = eta_scale(table)
    etas = np.asarray(tc.etas if tc.etas is not None else np.asarray(tc.eta_fractions) * scale, np.float32)
    x_all, y_all = data_lib.eval_windows(tokens, cfg.context, min(tc.n_windows, (tokens.size - 1) // cfg.context))
    graphdef, params = nnx.split(model, nnx.Param)
    metric_names = metric_records.names()
    fn = _make_batch_fn(graphdef, cfg, tc, len(etas), metric_names)
    base_key = jax.random.key(tc.seed)
    n_seq, t_len = x_all.shape
    acc = None
    per_token = {
        p: {k: [] for k in ("delta", "bound_f", "bound_t", "e", "thm1", "thm1_t")} for p in ("siftmoe",) + LAB_BASELINES
    }
    for i in range(0, n_seq, tc.batch_windows):
        x, y = x_all[i : i + tc.batch_windows], y_all[i : i + tc.batch_windows]
        b = x.shape[0]
        # per draw c: costs [b, T, L, N], distances [b, T, N-1], gains [b, T, L, N-1]; token index = global
        # position in the test windows
        draws = [
            _channel_fn(sc, jax.random.fold_in(jax.random.fold_in(base_key, c), i * t_len), b * t_len)
            for c in range(tc.n_draws)
        ]
        shape = (tc.n_draws, b, t_len)
        channels = jax.tree.map(lambda *a, shape=shape: jnp.stack(a).reshape(*shape, *a[0].shape[1:]), *draws)
        res = jax.device_get(
            fn(
                params,
                jnp.asarray(x),
                jnp.asarray(y),
                channels,
                jnp.asarray(etas),
                jnp.asarray(table),
                jnp.asarray(b_max),
                jnp.asarray(beta_max),
                sc,
            )
        )
        keys = ("ce_sum", "correct", "infeasible_layers", "metric_sum", "metric_n")
        sums = {p: jax.tree.map(lambda a: np.asarray(a, np.float64), {k: v[k] for k in keys}) for p, v in res.items()}
        acc = sums if acc is None else jax.tree.map(np.add, acc, sums)
        for p in per_token:
            for k in per_token[p]:
                v = np.asarray(res[p][k])  # [G, L, b, T]
                per_token[p][k].append(v.reshape(v.shape[0], v.shape[1], -1))
        if progress is not None:
            progress(min(i + b, n_seq), n_seq)
    n_tok = n_seq * t_len
    n_e, n_c = len(etas), tc.n_draws
    L = cfg.n_layers

    def entry(per_run: dict) -> dict:
        """{policy: per-run values [G]} -> {"siftmoe": [E] mean over draws, "siftmoe_per_draw": [E][C],
        baseline: mean, "<baseline>_per_draw": [C]}."""
        s = per_run["siftmoe"].reshape(n_e, n_c)
        d = {"siftmoe": s.mean(1).tolist(), "siftmoe_per_draw": s.tolist()}
        for p in LAB_BASELINES:
            d[p] = float(per_run[p].mean())
            d[f"{p}_per_draw"] = per_run[p].tolist()
        return d

    out = {
        "etas": etas.tolist(),
        "eta_scale": scale,
        "n_tokens": n_tok,
        "n_draws": n_c,
        "settings": dataclasses.asdict(tc),
        "scenario": {"n_nodes": sc.n_nodes, "top_k": sc.top_k, "n_layers": sc.n_layers},
        "metric_records": {},
    }
    out["accuracy"] = entry({p: a["correct"] / n_tok for p, a in acc.items()})
    out["loss"] = entry({p: a["ce_sum"] / n_tok for p, a in acc.items()})
    # every registered metric, as `simulate` computes it for an M = 1 task of L layers (one test token)
    for name in metric_names:
        rec = metric_records.get(name)
        out[name] = entry({p: a["metric_sum"][name] / np.maximum(a["metric_n"][name], 1) for p, a in acc.items()})
        out["metric_records"][name] = {"unit": rec.unit, "label": rec.label, "over": rec.over}
    # per (token, layer) decision: finer than the per-task infeasible_rate (a token with an infeasible layer)
    out["infeasible_layer_rate"] = entry({p: a["infeasible_layers"] / (n_tok * L) for p, a in acc.items()})
    cat = {p: {k: np.concatenate(v, axis=-1) for k, v in d.items()} for p, d in per_token.items()}
    # (a) Prop. 1 with exact F and with the table; over SiftMoE runs and practical Top-K (lost slots)
    shaped = cat["siftmoe"]  # arrays [E*C, L, tokens]
    s = {k: v.reshape(v.shape[0], -1) for k, v in shaped.items()}  # [E*C, L * tokens]
    changed = s["bound_f"] > 0
    r_exact = np.where(changed, s["delta"] / np.where(changed, s["bound_f"], 1.0), 0.0)
    r_table = np.where(changed, s["delta"] / np.where(s["bound_t"] > 0, s["bound_t"], np.inf), 0.0)
    viol = (s["delta"] > s["bound_f"] * (1 + PROP1_RTOL) + 1e-6) & changed
    out["prop1_exact"] = {
        **_quantiles(r_exact[changed]),
        "max_ratio": float(r_exact.max(initial=0.0)),
        "n_violations": int(viol.sum()),
        "rtol": PROP1_RTOL,
        "n_layer_tokens": int(s["delta"].size),
    }
    per_eta = []
    for e in range(n_e):
        rows = slice(e * n_c, (e + 1) * n_c)
        per_eta.append(_quantiles(r_table[rows][changed[rows]]))
    out["prop1_table"] = {"all": _quantiles(r_table[changed]), "per_eta": per_eta}
    # (b) Thm. 1 at the last layer (and every layer), over the SiftMoE runs
    e_last, b_last, bt_last = shaped["e"][:, -1], shaped["thm1"][:, -1], shaped["thm1_t"][:, -1]
    out["thm1"] = {
        "measured_delta": _quantiles((e_last / b_last).ravel()),
        "table_delta": _quantiles((e_last / bt_last).ravel()),
        "per_layer_max_ratio": (shaped["e"] / shaped["thm1"]).max(axis=(0, 2)).tolist(),
        "n_violations": int((shaped["e"] > shaped["thm1"] * (1 + PROP1_RTOL)).sum()),
        "mean_e_last": float(e_last.mean()),
        "mean_bound_last": float(b_last.mean()),
        "b_max": b_max.tolist(),
        "beta_max": beta_max.tolist(),
    }
    out["ratios"] = {
        "prop1_exact": r_exact[changed],
        "prop1_table": r_table[changed],
        "thm1": (e_last / b_last).ravel(),
        "delta": s["delta"][changed],
        "bound_f": s["bound_f"][changed],
        "bound_t": s["bound_t"][changed],
    }
    # Prop. 1 also on the practical Top-K runs (lost slots are skips)
    t = {k: v.reshape(v.shape[0], -1) for k, v in cat["topk"].items()}
    ch_t = t["bound_f"] > 0
    out["prop1_exact"]["topk_max_ratio"] = float(
        np.where(ch_t, t["delta"] / np.where(ch_t, t["bound_f"], 1.0), 0.0).max(initial=0.0)
    )
    out["prop1_exact"]["topk_n_violations"] = int(((t["delta"] > t["bound_f"] * (1 + PROP1_RTOL) + 1e-6) & ch_t).sum())
    out["ratios"]["topk_delta"], out["ratios"]["topk_bound_f"] = t["delta"][ch_t], t["bound_f"][ch_t]
    return out
