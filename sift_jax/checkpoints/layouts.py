"""Checkpoint layouts: where a model keeps its MoE tensors and what one expert computes.

A `Layout` is one record: the tensor-name templates of the router, the experts and (optionally) the
norm in front of the MoE layer, their shapes in named dimensions, and the expert's forward pass as a
pure JAX function. `register` adds one (also from outside the package); `get` and `names` read the
registry. Built in:

- `mixtral` (model_type `mixtral`): SwiGLU w2(silu(w1 z) * w3 z), router `gate`.
- `switch` (`switch_transformers`): ReLU wo(relu(wi z)), router `mlp.router.classifier`; the encoder's
  MoE layers, then the decoder's.
- `qwen-moe` (`qwen2_moe`, `qwen3_moe`, `olmoe`): SwiGLU down(silu(gate z) * up z), router `mlp.gate`;
  Qwen's always-on shared expert is not routed and is ignored.
- `gpt-oss` (`gpt_oss`): fused MXFP4 expert tensors (dequantised one expert at a time), gate/up
  interleaved, SwiGLU clamped at 7 with alpha 1.702 and (up + 1), biases; router with bias.
- `sift-lab` (`sift_jax_lab`): the Flax lab (`sift_jax.moe`), GELU MLP with biases, fused float
  tensors, router [d, N] (written by `sift_jax.checkpoints.export_lab`).

Template fields: `{prefix}` is one of the layout's `prefixes` with `{layer}` filled in (layers are
found by matching the router template against the checkpoint's tensor names; a layout with several
prefixes, e.g. Switch's encoder and decoder stacks, orders its layers prefix by prefix, then by layer
number), `{e}` the expert index. A template with `{e}` names one tensor per expert (stacked to
[N, ...] on reading); one without it names a fused tensor whose shape starts with N.

Shapes are tuples of dimension names (bound on first sight and checked everywhere after) and ints;
per-expert tensors give the shape of one expert. Every layout names the hidden size `d` and the
expert count `N` in its router tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from sift_jax.errors import ConfigError

__all__ = ["Layout", "Tensor", "dequantize_mxfp4", "for_model_type", "get", "linear_router", "names", "register"]

_HIGHEST = jax.lax.Precision.HIGHEST
KINDS = ("expert", "router", "norm")


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of a MoE layer.

    Attributes:
        template: name with `{prefix}` (and `{e}` for one tensor per expert).
        shape: dimension names and ints; per-expert tensors without the leading N.
        kind: "expert" (passed to `Layout.expert`), "router" (to `Layout.router`) or "norm" (the
            scale/bias of the norm in front of the layer, used only to draw hidden states).
        optional: a missing optional tensor is skipped; a missing required one is an error.

    Example:
        Mixtral's router [N, d] (one fused tensor) and expert e's w1 [f, d] (one tensor per expert):

        >>> router = Tensor("{prefix}.block_sparse_moe.gate.weight", ("N", "d"), "router")
        >>> router.per_expert, get("mixtral").tensors["w1"].per_expert, get("mixtral").tensors["w1"].shape
        (False, True, ('f', 'd'))
    """

    template: str
    shape: tuple
    kind: str = "expert"
    optional: bool = False

    @property
    def per_expert(self) -> bool:
        return "{e}" in self.template


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """A checkpoint layout (see the module docstring).

    Attributes:
        name: registry key, e.g. "mixtral".
        prefixes: layer prefixes with `{layer}`, in forward order.
        tensors: role -> `Tensor`. The role names are the keys of the dicts the functions receive.
        expert: (weights of one expert: role -> float32 or raw array without the N axis,
            z float32[T, d]) -> float32[T, d], that expert's FFN_i(z). Pure JAX.
        router: (router tensors: role -> float32 array, z float32[T, d]) -> float32[T, N] logits.
        model_types: config.json `model_type` values that select this layout.
        check: optional (bound dimensions: name -> int) -> None or a message, for relations the
            shapes cannot state (e.g. MXFP4 groups * 32 = d).
        description: one line for help texts.

    Example:
        The built-in Mixtral record: its roles, and one expert (d = 4, f = 3) and the router (N = 2) on
        T = 5 tokens:

        >>> import numpy as np
        >>> lay = get("mixtral")
        >>> lay.roles("expert"), lay.roles("router"), lay.model_types
        (('w1', 'w3', 'w2'), ('router',), ('mixtral',))
        >>> w = {"w1": np.ones((3, 4), np.float32), "w3": np.ones((3, 4), np.float32),  # [f, d]
        ...      "w2": np.ones((4, 3), np.float32)}  # [d, f]
        >>> z = np.zeros((5, 4), np.float32)
        >>> lay.expert(w, z).shape, lay.router({"router": np.ones((2, 4), np.float32)}, z).shape  # [T, d], [T, N]
        ((5, 4), (5, 2))
    """

    name: str
    prefixes: tuple
    tensors: Mapping[str, Tensor]
    expert: Callable
    router: Callable
    model_types: tuple = ()
    check: Callable | None = None
    description: str = ""

    def roles(self, kind: str) -> tuple:
        """Role names of one kind ("expert", "router" or "norm")."""
        return tuple(r for r, t in self.tensors.items() if t.kind == kind)


_REGISTRY: dict[str, Layout] = {}


def register(layout: Layout, *, replace: bool = False) -> Layout:
    """Add a layout to the registry (validated); a second layout of the same name needs `replace=True`.

    Args:
        layout: the record.
        replace: allow replacing a registered layout of the same name.

    Returns:
        the layout.

    Raises:
        ConfigError: a duplicate name, a prefix without `{layer}`, a template without `{prefix}`, an
            unknown kind, no router tensor naming N and d, or a model_type claimed by another layout.

    Example:
        >>> register(get("mixtral"))
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: layout = 'mixtral' is invalid: allowed is a new name (registered: ...)
    """
    if not isinstance(layout, Layout):
        raise ConfigError("layout", layout, "a sift_jax.checkpoints.Layout")
    if layout.name in _REGISTRY and not replace:
        raise ConfigError("layout", layout.name, f"a new name (registered: {', '.join(names())})")
    if not layout.prefixes or any("{layer}" not in p for p in layout.prefixes):
        raise ConfigError("prefixes", layout.prefixes, "one or more prefixes containing {layer}")
    for role, t in layout.tensors.items():
        if "{prefix}" not in t.template or t.kind not in KINDS:
            raise ConfigError(f"tensors.{role}", t, f"a template with {{prefix}} and a kind in {KINDS}")
    routers = [t for t in layout.tensors.values() if t.kind == "router" and not t.optional and not t.per_expert]
    if not any("N" in t.shape and "d" in t.shape for t in routers) or not layout.roles("expert"):
        raise ConfigError(
            "tensors",
            layout.name,
            "a required router tensor (not per expert) whose shape names N and d, and at least one expert tensor",
        )
    for mt in layout.model_types:
        owner = next((o.name for o in _REGISTRY.values() if mt in o.model_types and o.name != layout.name), None)
        if owner is not None:
            raise ConfigError("model_types", mt, f"a model_type no other layout claims ({owner} has it)")
    _REGISTRY[layout.name] = layout
    return layout


def get(name: str) -> Layout:
    """The registered layout `name`.

    Args:
        name: a registered name (see `names`); a `Layout` is returned as it is.

    Returns:
        the `Layout`.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).

    Example:
        >>> get("mixtral").tensors["w1"].template
        '{prefix}.block_sparse_moe.experts.{e}.w1.weight'
        >>> get("llama")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: layout = 'llama' is invalid: allowed is one of gpt-oss, mixtral, qwen-moe, ...
    """
    if isinstance(name, Layout):
        return name
    if name not in _REGISTRY:
        raise ConfigError("layout", name, f"one of {', '.join(names())}")
    return _REGISTRY[name]


def names() -> tuple:
    """Registered layout names, sorted.

    Returns:
        tuple of str.

    Example:
        >>> names()
        ('gpt-oss', 'mixtral', 'qwen-moe', 'sift-lab', 'switch')
    """
    return tuple(sorted(_REGISTRY))


def for_model_type(model_type: str) -> Layout | None:
    """The layout whose `model_types` holds `model_type`, or None.

    Args:
        model_type: config.json's `model_type`, e.g. "qwen3_moe".

    Returns:
        the `Layout`, or None when no layout claims `model_type`.

    Example:
        >>> for_model_type("qwen3_moe").name, for_model_type("llama")
        ('qwen-moe', None)
    """
    return next((lay for lay in _REGISTRY.values() if model_type in lay.model_types), None)


# ---------------------------------------------------------------------------------------------------
# Expert and router functions (weights in float32; z float32[T, d])
# ---------------------------------------------------------------------------------------------------


def _linear(z: jax.Array, weight: jax.Array) -> jax.Array:
    """z @ weight.T for a PyTorch-style [out, in] weight, full float32 precision (no TF32)."""
    return jnp.matmul(z, weight.T, precision=_HIGHEST)


def linear_router(w: dict, z: jax.Array) -> jax.Array:
    """Router logits z W^T (+ b), the `router` of the Hugging Face layouts.

    Args:
        w: `router` float[N, d] (PyTorch [out, in]) and optionally `router_bias` float[N].
        z: hidden states float[T, d].

    Returns:
        logits float32[T, N].

    Example:
        >>> import numpy as np
        >>> w = {"router": np.eye(2, 3, dtype=np.float32), "router_bias": np.array([0.0, 1.0], np.float32)}
        >>> linear_router(w, np.full((1, 3), 2.0, np.float32)).tolist()  # N = 2, d = 3, T = 1
        [[2.0, 3.0]]
    """
    logits = _linear(z, w["router"])
    return logits + w["router_bias"] if "router_bias" in w else logits


def _swiglu(z, gate, up, down):
    return _linear(jax.nn.silu(_linear(z, gate)) * _linear(z, up), down)


def _switch_expert(w: dict, z: jax.Array) -> jax.Array:
    return _linear(jax.nn.relu(_linear(z, w["wi"])), w["wo"])


def _lab_expert(w: dict, z: jax.Array) -> jax.Array:
    # sift_jax.moe.model.MoELayer.expert_outputs: gelu (tanh form) with biases, kernels [in, out]
    h = jax.nn.gelu(jnp.matmul(z, w["w1"], precision=_HIGHEST) + w["b1"])
    return jnp.matmul(h, w["w2"], precision=_HIGHEST) + w["b2"]


def _lab_router(w: dict, z: jax.Array) -> jax.Array:
    return jnp.matmul(z, w["router"], precision=_HIGHEST)


FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantize_mxfp4(blocks: jax.Array, scales: jax.Array) -> jax.Array:
    """MXFP4 to float32 (GPT-OSS expert tensors).

    Args:
        blocks: uint8[..., G, 16], two E2M1 codes per byte (low nibble first), 32 values per group.
        scales: uint8[..., G] E8M0 scales, 2^(s - 127) per group of 32.

    Returns:
        float32[..., G * 32].

    Example:
        >>> import numpy as np
        >>> blocks = np.zeros((1, 16), np.uint8); blocks[0, 0] = 0x21      # codes 1 (0.5), then 2 (1.0)
        >>> dequantize_mxfp4(blocks, np.array([128], np.uint8))[:3].tolist()  # scale 2^1
        [1.0, 2.0, 0.0]
    """
    lut = jnp.asarray(FP4_E2M1, jnp.float32)
    blocks = jnp.asarray(blocks)
    lo, hi = lut[blocks & 0x0F], lut[blocks >> 4]
    values = jnp.stack([lo, hi], axis=-1).reshape(blocks.shape[:-1] + (2 * blocks.shape[-1],))
    values = jnp.ldexp(values, jnp.asarray(scales).astype(jnp.int32)[..., None] - 127)
    return values.reshape(blocks.shape[:-2] + (-1,))


GPT_OSS_ALPHA = 1.702
GPT_OSS_LIMIT = 7.0  # config.json swiglu_limit of the released models


def _gpt_oss_expert(w: dict, z: jax.Array) -> jax.Array:
    # transformers GptOssExperts: gate/up interleaved along the output, gate clamped above, up both ways
    gate_up = _linear(z, dequantize_mxfp4(w["gate_up_blocks"], w["gate_up_scales"])) + w["gate_up_bias"]
    gate = jnp.minimum(gate_up[:, ::2], GPT_OSS_LIMIT)
    up = jnp.clip(gate_up[:, 1::2], -GPT_OSS_LIMIT, GPT_OSS_LIMIT)
    glu = gate * jax.nn.sigmoid(GPT_OSS_ALPHA * gate)
    return _linear((up + 1.0) * glu, dequantize_mxfp4(w["down_blocks"], w["down_scales"])) + w["down_bias"]


def _gpt_oss_check(dims: dict) -> str | None:
    if dims["G"] * 32 != dims["d"] or dims["Gf"] * 64 != dims["f2"]:
        return "MXFP4 groups of 32: G * 32 = d and Gf * 32 = f (gate_up rows 2f)"
    return None


def _rms_norm(template: str) -> dict:
    return {"norm_scale": Tensor(template, ("d",), "norm", optional=True)}


def _swiglu_layout(name: str, model_types: tuple, moe: str, roles: tuple, description: str) -> Layout:
    """A Hugging Face SwiGLU MoE: router `{moe}.gate.weight` [N, d]; expert e's `{moe}.experts.{e}.{role}.weight`
    for roles (gate [f, d], up [f, d], down [d, f]); the RMSNorm `post_attention_layernorm` in front."""
    gate, up, down = roles

    def expert(w: dict, z: jax.Array) -> jax.Array:
        return _swiglu(z, w[gate], w[up], w[down])

    shapes = {gate: ("f", "d"), up: ("f", "d"), down: ("d", "f")}
    return Layout(
        name=name,
        prefixes=("model.layers.{layer}",),
        model_types=model_types,
        tensors={
            "router": Tensor(moe + ".gate.weight", ("N", "d"), "router"),
            **{r: Tensor(moe + ".experts.{e}." + r + ".weight", shapes[r]) for r in roles},
            **_rms_norm("{prefix}.post_attention_layernorm.weight"),
        },
        expert=expert,
        router=linear_router,
        description=description,
    )


register(
    _swiglu_layout(
        "mixtral",
        ("mixtral",),
        "{prefix}.block_sparse_moe",
        ("w1", "w3", "w2"),
        "Mixtral: block_sparse_moe.experts.{e}.w1/w2/w3 (SwiGLU), router gate",
    )
)
register(
    _swiglu_layout(
        "qwen-moe",
        ("qwen2_moe", "qwen3_moe", "olmoe"),
        "{prefix}.mlp",
        ("gate_proj", "up_proj", "down_proj"),
        "Qwen-MoE / OLMoE: mlp.experts.{e}.gate_proj/up_proj/down_proj (SwiGLU), router mlp.gate",
    )
)

_SW = "{prefix}.mlp"
register(
    Layout(
        name="switch",
        prefixes=("encoder.block.{layer}.layer.1", "decoder.block.{layer}.layer.2"),
        model_types=("switch_transformers",),
        tensors={
            "router": Tensor(_SW + ".router.classifier.weight", ("N", "d"), "router"),
            "wi": Tensor(_SW + ".experts.expert_{e}.wi.weight", ("f", "d")),
            "wo": Tensor(_SW + ".experts.expert_{e}.wo.weight", ("d", "f")),
            **_rms_norm("{prefix}.layer_norm.weight"),
        },
        expert=_switch_expert,
        router=linear_router,
        description="Switch Transformers: mlp.experts.expert_{e}.wi/wo (ReLU), router mlp.router.classifier",
    )
)

_GX = "{prefix}.mlp.experts"
register(
    Layout(
        name="gpt-oss",
        prefixes=("model.layers.{layer}",),
        model_types=("gpt_oss",),
        tensors={
            "router": Tensor("{prefix}.mlp.router.weight", ("N", "d"), "router"),
            "router_bias": Tensor("{prefix}.mlp.router.bias", ("N",), "router"),
            "gate_up_blocks": Tensor(_GX + ".gate_up_proj_blocks", ("N", "f2", "G", 16)),
            "gate_up_scales": Tensor(_GX + ".gate_up_proj_scales", ("N", "f2", "G")),
            "gate_up_bias": Tensor(_GX + ".gate_up_proj_bias", ("N", "f2")),
            "down_blocks": Tensor(_GX + ".down_proj_blocks", ("N", "d", "Gf", 16)),
            "down_scales": Tensor(_GX + ".down_proj_scales", ("N", "d", "Gf")),
            "down_bias": Tensor(_GX + ".down_proj_bias", ("N", "d")),
            **_rms_norm("{prefix}.post_attention_layernorm.weight"),
        },
        expert=_gpt_oss_expert,
        router=linear_router,
        check=_gpt_oss_check,
        description="GPT-OSS: fused mlp.experts.gate_up_proj/down_proj MXFP4 blocks+scales with biases, "
        "router mlp.router (with bias)",
    )
)

register(
    Layout(
        name="sift-lab",
        prefixes=("blocks.{layer}",),
        model_types=("sift_jax_lab",),
        tensors={
            "router": Tensor("{prefix}.moe.router", ("d", "N"), "router"),
            "w1": Tensor("{prefix}.moe.w1", ("N", "d", "f")),
            "b1": Tensor("{prefix}.moe.b1", ("N", "f")),
            "w2": Tensor("{prefix}.moe.w2", ("N", "f", "d")),
            "b2": Tensor("{prefix}.moe.b2", ("N", "d")),
            "norm_scale": Tensor("{prefix}.ln2.scale", ("d",), "norm", optional=True),
            "norm_bias": Tensor("{prefix}.ln2.bias", ("d",), "norm", optional=True),
        },
        expert=_lab_expert,
        router=_lab_router,
        description="the Flax lab (sift_jax.moe) exported by sift_jax.checkpoints.export_lab: fused "
        "w1/b1/w2/b2 (GELU MLP with biases), router [d, N]",
    )
)
