"""A small decoder-only MoE transformer language model in Flax NNX (paper §2.1-§2.2).

Block l (pre-norm):  x <- x + Attn(LN1(x));  z = LN2(x);  x <- x + MoE_l(z).
MoE layer (eqs. 11-12): router logits P(z) = z W_r in float32; Top-K indices A_Top by logit;
gate weights g_k over the K slots, either renormalised over the active set (``gate_norm="topk"``,
the paper's §2.1 and Mixtral) or the full-softmax probabilities (``gate_norm="softmax"``, Switch; the
only choice that trains the router through the task loss when K = 1). Every expert is a two-layer GELU
FFN, and all N experts are computed densely with one einsum, so the per-expert outputs
FFN_i(z) [B, T, N, d] are always available.

Explicit selection (eq. 12): ``selection`` int32[L, B, T, K] gives, per layer, token and Top-K slot k,
the expert/node phi(A_Top[k]) that serves slot k (slot k holds the k-th Top-K expert), or -1 = skip.
The layer output is  y~ = sum_k g_k FFN_{phi_k}(z): a substitute inherits g_k, a skip contributes
zero, no renormalisation. The identity selection (``selection = topk``) reproduces the plain Top-K
forward bit for bit (same code path). Instead of a fixed array, ``select_fn(layer, gates, topk, z)``
can choose each layer's selection online from that layer's own gates (paper §4.7), which is what the
tightness lab does under a policy.

Auxiliary losses: Switch load balancing N * sum_i f_i P_i (f_i = share of the B*T*K Top-K slots routed
to expert i, P_i = mean router probability) and the router z-loss mean(logsumexp(P)^2), averaged over
layers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sift_jax.errors import ConfigError

__all__ = ["MoEConfig", "MoELM", "init_model", "tiny_config"]

GATE_NORMS = ("topk", "softmax")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Model and loss hyperparameters (hashable, JSON round-trip via `to_dict` / `from_dict`).

    Every field is validated on construction; a bad value raises `ConfigError` naming the field.

    Attributes:
        vocab_size: byte vocabulary (256).
        context: maximum sequence length T (learned positions), tokens.
        d_model: residual width d. n_heads: attention heads (d_model % n_heads == 0).
        n_layers: L, every block's FFN is an MoE layer. n_experts: N. top_k: K (1 <= K <= N).
        d_ff: hidden width of each expert FFN.
        gate_norm: "topk" (renormalise over the active set, paper), "softmax" (Switch), or
            "auto" = "topk" if K > 1 else "softmax" (see `resolved_gate_norm`).
        lb_coef: weight of the Switch load-balancing loss. z_coef: weight of the router z-loss
            (both dimensionless, >= 0).

    Example:
        >>> cfg = MoEConfig(n_experts=8, top_k=1)
        >>> cfg.resolved_gate_norm            # "auto" with K = 1: Switch full-softmax gates
        'softmax'
        >>> MoEConfig.from_dict(json.loads(cfg.to_json())) == cfg
        True
        >>> MoEConfig(d_model=100, n_heads=3)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: n_heads = 3 is invalid: allowed is a divisor of d_model=100
    """

    vocab_size: int = 256
    context: int = 128
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    n_experts: int = 8
    top_k: int = 2
    d_ff: int = 128
    gate_norm: str = "auto"
    lb_coef: float = 0.01
    z_coef: float = 1e-3

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_model", "n_heads", "n_layers", "n_experts", "top_k", "d_ff"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError("n_heads", self.n_heads, f"a divisor of d_model={self.d_model}")
        if self.top_k > self.n_experts:
            raise ConfigError("top_k", self.top_k, f"an integer in [1, n_experts={self.n_experts}]")
        if self.gate_norm not in GATE_NORMS + ("auto",):
            raise ConfigError("gate_norm", self.gate_norm, "one of topk, softmax, auto")
        for name in ("lb_coef", "z_coef"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v >= 0:
                raise ConfigError(name, v, "a number >= 0")

    @property
    def resolved_gate_norm(self) -> str:
        """The gate normalisation in force: "topk" or "softmax" ("auto" resolved by K)."""
        if self.gate_norm == "auto":
            return "topk" if self.top_k > 1 else "softmax"
        return self.gate_norm

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MoEConfig:
        """Inverse of `to_dict`; an unknown key raises `ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in known:
                raise ConfigError(k, d[k], f"a MoEConfig field ({', '.join(sorted(known))})")
        return cls(**d)

    def to_json(self) -> str:
        """`to_dict` as a JSON string with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True)


def tiny_config(**overrides) -> MoEConfig:
    """A very small configuration for tests and `quick_lab` (d 32, 2 layers, 4 experts, T 32).

    Base values: context 32, d_model 32, n_heads 2, n_layers 2, n_experts 4, top_k 2, d_ff 64; every
    other field keeps its `MoEConfig` default.

    Args:
        **overrides: `MoEConfig` fields that replace the base values.

    Returns:
        MoEConfig.

    Example:
        >>> cfg = tiny_config(n_experts=8)
        >>> cfg.context, cfg.d_model, cfg.n_layers, cfg.n_experts, cfg.top_k
        (32, 32, 2, 8, 2)
    """
    base = dict(context=32, d_model=32, n_heads=2, n_layers=2, n_experts=4, top_k=2, d_ff=64)
    base.update(overrides)
    return MoEConfig(**base)


class Attention(nnx.Module):
    """Causal multi-head self-attention."""

    def __init__(self, cfg: MoEConfig, *, rngs: nnx.Rngs):
        self.n_heads = cfg.n_heads
        self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(
            cfg.d_model,
            cfg.d_model,
            use_bias=False,
            rngs=rngs,
            kernel_init=nnx.initializers.normal(0.02 / (2 * cfg.n_layers) ** 0.5),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.n_heads
        qkv = self.qkv(x).reshape(b, t, 3, h, d // h).transpose(2, 0, 3, 1, 4)  # [3, B, H, T, e]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.swapaxes(-1, -2)) / jnp.sqrt(jnp.asarray(d // h, x.dtype))
        mask = jnp.tril(jnp.ones((t, t), bool))
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        att = jax.nn.softmax(scores, axis=-1)
        return self.out((att @ v).transpose(0, 2, 1, 3).reshape(b, t, d))


class MoELayer(nnx.Module):
    """N dense experts plus a float32 router (see the module docstring)."""

    def __init__(self, cfg: MoEConfig, *, rngs: nnx.Rngs):
        n, d, f = cfg.n_experts, cfg.d_model, cfg.d_ff
        self.top_k = cfg.top_k
        self.gate_norm = cfg.resolved_gate_norm
        self.router = nnx.Param(nnx.initializers.normal(0.1 / d**0.5)(rngs.params(), (d, n), jnp.float32))
        self.w1 = nnx.Param(nnx.initializers.normal(1.0 / d**0.5)(rngs.params(), (n, d, f), jnp.float32))
        self.b1 = nnx.Param(jnp.zeros((n, f), jnp.float32))
        self.w2 = nnx.Param(
            nnx.initializers.normal(0.02 / (2 * cfg.n_layers) ** 0.5)(rngs.params(), (n, f, d), jnp.float32)
        )
        self.b2 = nnx.Param(jnp.zeros((n, d), jnp.float32))

    def expert_outputs(self, z: jax.Array) -> jax.Array:
        """FFN_i(z) for every expert i: float[..., N, d] from z float[..., d].

        Dense: the first layer of all experts is one [M, d] x [d, N*f] GEMM, the second a matmul batched
        over experts (about 3x faster on CPU than the equivalent two-einsum form).
        """
        w1, w2 = self.w1[...], self.w2[...]
        n, d, f = w1.shape
        lead = z.shape[:-1]
        zz = z.reshape(-1, d)
        h = jax.nn.gelu((zz @ w1.transpose(1, 0, 2).reshape(d, n * f)).reshape(-1, n, f) + self.b1[...])
        o = jax.lax.dot_general(h, w2, (((2,), (1,)), ((1,), (0,))))  # [N, M, d]
        return (o.transpose(1, 0, 2) + self.b2[...]).reshape(lead + (n, w2.shape[-1]))

    def route(self, z: jax.Array):
        """Router in float32.

        Returns:
            logits float32[..., N], probs float32[..., N] (full softmax), gates float32[..., K],
            topk int32[..., K] (descending logit).
        """
        logits = jnp.einsum("...d,dn->...n", z.astype(jnp.float32), self.router[...].astype(jnp.float32))
        probs = jax.nn.softmax(logits, axis=-1)
        top_logits, topk = jax.lax.top_k(logits, self.top_k)
        if self.gate_norm == "topk":
            gates = jax.nn.softmax(top_logits, axis=-1)
        else:
            gates = jnp.take_along_axis(probs, topk, axis=-1)
        return logits, probs, gates, topk.astype(jnp.int32)


def combine(outputs: jax.Array, gates: jax.Array, selection: jax.Array) -> jax.Array:
    """Eq. (12): y~ = sum_k g_k FFN_{selection_k}; -1 (or any index outside [0, N)) contributes zero.

    Args:
        outputs: float[..., N, d] per-expert outputs. gates: float[..., K]. selection: int[..., K].

    Returns:
        float[..., d].

    >>> o = jnp.arange(6.0).reshape(3, 2)        # 3 experts, d = 2
    >>> combine(o, jnp.array([0.7, 0.3]), jnp.array([2, -1])).tolist()   # 0.7 * o[2], slot 2 skipped
    [2.8..., 3.5]
    """
    n = outputs.shape[-2]
    weights = jnp.einsum(
        "...k,...kn->...n", gates.astype(outputs.dtype), jax.nn.one_hot(selection, n, dtype=outputs.dtype)
    )
    return jnp.einsum("...n,...nd->...d", weights, outputs)


class Block(nnx.Module):
    def __init__(self, cfg: MoEConfig, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.moe = MoELayer(cfg, rngs=rngs)


class MoELM(nnx.Module):
    """Decoder-only byte-level MoE language model.

    Calling the model runs the forward pass; see `__call__` for its arguments (tokens, an explicit
    `selection` or an online `select_fn`) and outputs.

    Args:
        cfg: the model configuration (kept as `.cfg`).
        rngs: `nnx.Rngs` for the parameter initialisers (`init_model` builds one from a seed).

    Example:
        Shapes of the outputs (L = 2, N = 4, K = 2, d = 32 in `tiny_config`). `nnx.eval_shape`
        traces the model without computing anything, which keeps this example fast; a real model
        (`init_model`, `train`) is called the same way, ``model(tokens, return_internals=True)``.

        >>> cfg = tiny_config()
        >>> model = nnx.eval_shape(lambda: MoELM(cfg, rngs=nnx.Rngs(0)))
        >>> tokens = jnp.zeros((2, 8), jnp.int32)                     # B = 2, T = 8
        >>> logits, aux = nnx.eval_shape(lambda m, x: m(x, return_internals=True), model, tokens)
        >>> logits.shape, aux["expert_outputs"].shape, aux["gates"].shape, aux["hidden"].shape
        ((2, 8, 256), (2, 2, 8, 4, 32), (2, 2, 8, 2), (3, 2, 8, 32))
        >>> model(jnp.zeros((1, 33), jnp.int32))       # T > context: refused before any computation
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: tokens = 'length 33' is invalid: allowed is a sequence length <= context=32
    """

    def __init__(self, cfg: MoEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, embedding_init=nnx.initializers.normal(0.02))
        self.pos = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (cfg.context, cfg.d_model), jnp.float32))
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        selection: jax.Array | None = None,
        select_fn: Callable | None = None,
        return_internals: bool = False,
    ):
        """Forward pass.

        Args:
            tokens: int32[B, T] bytes, T <= context.
            selection: optional int32[L, B, T, K]: expert serving each Top-K slot per layer, -1 = skip
                (eq. 12). None = plain Top-K.
            select_fn: optional callable (layer:int, gates f32[B,T,K], topk i32[B,T,K], z f32[B,T,d])
                -> int32[B, T, K], called at each layer with that layer's own routing (online policy).
                Mutually exclusive with `selection`.
            return_internals: also return per-layer tensors (see Returns).

        Returns:
            (logits float[B, T, V] (unnormalised next-byte log-probabilities, nats), aux dict). aux
            always holds the scalars "lb_loss" and "z_loss" (means over layers). With
            `return_internals` it also holds, stacked over layers:
            "expert_outputs" [L, B, T, N, d] (FFN_i(z) of every expert), "gates" [L, B, T, K],
            "topk" [L, B, T, K], "selection" [L, B, T, K] (what was applied), "router_probs"
            [L, B, T, N], "router_logits" [L, B, T, N], "moe_inputs" z [L, B, T, d], "moe_outputs"
            y~ [L, B, T, d], "hidden" residual stream [L + 1, B, T, d] (after the embedding and after
            each block) and "final_hidden" LN_f output [B, T, d].

        Raises:
            ConfigError: T > context, both `selection` and `select_fn` given, a `selection` of the
                wrong shape, or (when concrete) entries outside [-1, N-1].
        """
        cfg = self.cfg
        if selection is not None and select_fn is not None:
            raise ConfigError("selection", "both selection and select_fn", "at most one of them")
        b, t = tokens.shape
        if t > cfg.context:
            raise ConfigError("tokens", f"length {t}", f"a sequence length <= context={cfg.context}")
        if selection is not None:
            want = (cfg.n_layers, b, t, cfg.top_k)
            if tuple(selection.shape) != want:
                raise ConfigError("selection", f"shape {tuple(selection.shape)}", f"an int array of shape {want}")
            s = _concrete(selection)
            if s is not None and bool(np.any((s < -1) | (s >= cfg.n_experts))):
                raise ConfigError("selection", "out-of-range entries", f"integers in [-1, {cfg.n_experts - 1}]")
        x = self.embed(tokens) + self.pos[...][:t]
        keep = {
            k: []
            for k in (
                "expert_outputs",
                "gates",
                "topk",
                "selection",
                "router_probs",
                "router_logits",
                "moe_inputs",
                "moe_outputs",
            )
        }
        hidden = [x]
        lb, zl = [], []
        for l, blk in enumerate(self.blocks):
            x = x + blk.attn(blk.ln1(x))
            z = blk.ln2(x)
            logits, probs, gates, topk = blk.moe.route(z)
            if selection is not None:
                sel = selection[l].astype(jnp.int32)
            elif select_fn is not None:
                sel = jnp.asarray(select_fn(l, gates, topk, z), jnp.int32)
            else:
                sel = topk
            outs = blk.moe.expert_outputs(z)
            y = combine(outs, gates, sel)
            x = x + y
            hidden.append(x)
            # Switch load balancing over all K slots, and router z-loss.
            frac = jax.nn.one_hot(topk, cfg.n_experts, dtype=jnp.float32).sum(-2).mean((0, 1)) / cfg.top_k
            lb.append(cfg.n_experts * jnp.sum(frac * probs.mean((0, 1))))
            zl.append(jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1))))
            if return_internals:
                for k, v in (
                    ("expert_outputs", outs),
                    ("gates", gates),
                    ("topk", topk),
                    ("selection", sel),
                    ("router_probs", probs),
                    ("router_logits", logits),
                    ("moe_inputs", z),
                    ("moe_outputs", y),
                ):
                    keep[k].append(v)
        h = self.ln_f(x)
        out = self.head(h)
        aux = {"lb_loss": jnp.mean(jnp.stack(lb)), "z_loss": jnp.mean(jnp.stack(zl))}
        if return_internals:
            aux.update({k: jnp.stack(v) for k, v in keep.items()})
            aux["hidden"] = jnp.stack(hidden)
            aux["final_hidden"] = h
        return out, aux


def _concrete(x):
    """`x` as a NumPy array, or None when it is traced (inside jit/vmap)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def init_model(cfg: MoEConfig, seed: int = 0) -> MoELM:
    """A freshly initialised model (deterministic in `seed`).

    Args:
        cfg: the model configuration.
        seed: integer seed of the parameter initialisers (``nnx.Rngs(params=seed)``).

    Returns:
        MoELM with float32 parameters.

    Example:
        Count the parameters. `nnx.eval_shape` traces the initialiser without running it (a real
        call compiles each random initialiser, a few seconds of CPU); the count follows from the
        shapes: embedding and head V d each, positions T d, final LayerNorm 2 d, and per layer two
        LayerNorms (4 d), attention (4 d^2), router (d N) and N experts (2 N d f + N f + N d).

        >>> model = nnx.eval_shape(lambda: init_model(tiny_config(), seed=0))
        >>> n = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        >>> V, T, d, N, f, L = 256, 32, 32, 4, 64, 2
        >>> n == 2 * V * d + T * d + 2 * d + L * (4 * d + 4 * d * d + d * N + 2 * N * d * f + N * f + N * d)
        True
    """
    return MoELM(cfg, rngs=nnx.Rngs(params=seed))
