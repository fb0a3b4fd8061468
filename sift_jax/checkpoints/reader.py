"""Lazy safetensors checkpoints: names and shapes from the headers, tensors one MoE layer at a time.

`Checkpoint(path, layout=None)` opens a directory holding `model.safetensors`, a sharded
`model.safetensors.index.json` (its `weight_map` names the shard of every tensor), or any
`*.safetensors` files; or one `.safetensors` file. Only the headers are read on opening: every MoE
layer of the layout is found and its tensors' names and shapes are checked then, so a missing tensor,
a wrong shape or a corrupted file is refused before any computation. `read_layer(l)` then loads one
layer's tensors (memory-mapped by `safetensors.safe_open`, copied to the default JAX device, per-expert
tensors stacked to [N, ...]) and nothing else; call it layer by layer so that one layer is in memory
at a time. Weights keep their stored dtype (BF16 stays BF16): the calibration casts one expert at a
time to float32.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import jax.numpy as jnp
from safetensors import SafetensorError, safe_open

from sift_jax.checkpoints import layouts
from sift_jax.errors import ConfigError

__all__ = ["Checkpoint", "LayerWeights"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_SHOWN = 12  # names listed in an error message
_DTYPE_BYTES = {
    "BF16": 2,
    "F16": 2,
    "F32": 4,
    "F64": 8,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "I32": 4,
    "U32": 4,
    "I64": 8,
    "U64": 8,
    "BOOL": 1,
}


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """One MoE layer's tensors as JAX arrays in their stored dtype.

    Attributes:
        name: the layer prefix, e.g. "model.layers.3".
        expert: role -> [N, ...] (per-expert tensors stacked, fused ones as stored).
        router: role -> router tensor(s). norm: role -> norm scale/bias ({} when absent).
        dims: bound dimension names, e.g. {"N": 8, "d": 4096, "f": 14336}.

    Example:
        What `Checkpoint.read_layer` returns, here built by hand (N = 2 experts, d = 4, f = 3):

        >>> w = LayerWeights("model.layers.0", expert={"w1": jnp.ones((2, 3, 4), jnp.bfloat16)},
        ...                  router={"router": jnp.ones((2, 4), jnp.float32)}, norm={}, dims={"N": 2, "d": 4, "f": 3})
        >>> w.nbytes  # 24 BF16 values (2 bytes each) + 8 float32 values (4 bytes each)
        80
    """

    name: str
    expert: dict
    router: dict
    norm: dict
    dims: dict

    @property
    def nbytes(self) -> int:
        """Bytes of all the layer's arrays."""
        return sum(a.nbytes for part in (self.expert, self.router, self.norm) for a in part.values())


def _corrupted(path, err) -> ConfigError:
    return ConfigError(
        "checkpoint",
        str(path),
        "a valid safetensors file",
        message=f"checkpoint file {path} is not a valid safetensors file ({err})",
    )


def _read_header(path: pathlib.Path) -> dict:
    """name -> (shape tuple, dtype string) of one file, from its header."""
    try:
        with safe_open(str(path), framework="flax") as f:
            out = {}
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                part = f.get_slice(name)
                out[name] = (tuple(part.get_shape()), part.get_dtype())
            return out
    except (SafetensorError, OSError, ValueError) as err:
        raise _corrupted(path, err) from None


def _files(path: pathlib.Path) -> tuple[dict, pathlib.Path]:
    """(tensor name -> file, directory) for a checkpoint file or directory."""
    if path.is_file():
        return {n: path for n in _read_header(path)}, path.parent
    if not path.is_dir():
        raise ConfigError("checkpoint", str(path), "an existing directory or .safetensors file")
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                "checkpoint",
                str(index),
                "a JSON index with a weight_map object",
                message=f"checkpoint index {index} is not valid ({err})",
            ) from None
        return {n: path / f for n, f in weight_map.items()}, path
    files = [path / SINGLE_FILE] if (path / SINGLE_FILE).is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            "checkpoint", str(path), f"a directory holding {SINGLE_FILE}, {INDEX_FILE} or *.safetensors files"
        )
    where = {}
    for f in files:
        for n in _read_header(f):
            if n in where:
                raise ConfigError(
                    "checkpoint",
                    str(path),
                    "tensor names unique across files",
                    message=f"checkpoint {path}: tensor {n!r} is in both {where[n].name} and {f.name}",
                )
            where[n] = f
    return where, path


def _listing(names, prefix: str = "") -> str:
    shown = [n[len(prefix) :] for n in sorted(names)[:_SHOWN]]
    more = f", ... (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(shown) + more


class Checkpoint:
    """A safetensors checkpoint of a MoE model, opened lazily (see the module docstring).

    Args:
        path: directory (single file, sharded index or several files) or one .safetensors file.
        layout: a registered layout name or `Layout`; None takes it from config.json's `model_type`,
            else the only layout whose layers are found in the tensor names.

    Attributes:
        path, directory, layout, config (config.json as a dict, {} when absent), layers (tuple of
        layer prefixes in forward order), n_experts (N), hidden_size (d).

    Raises:
        ConfigError: no such path or no safetensors there; a corrupted file or index; an unknown
            layout; no MoE layer of the layout; a missing tensor or a wrong shape in any layer;
            layers with different N or d.

    Example:
        A one-layer Mixtral-layout checkpoint (N = 2 experts, d = 4, f = 3), written and read back:

        >>> import tempfile, numpy as np
        >>> from sift_jax.checkpoints import save_checkpoint
        >>> p = "model.layers.0.block_sparse_moe"
        >>> t = {f"{p}.gate.weight": np.ones((2, 4), np.float32)}
        >>> t |= {f"{p}.experts.{e}.{w}.weight": np.ones(s, np.float32)
        ...       for e in range(2) for w, s in (("w1", (3, 4)), ("w2", (4, 3)), ("w3", (3, 4)))}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(t, d, config={"model_type": "mixtral"})
        ...     ckpt = Checkpoint(d)
        ...     layer = ckpt.read_layer(0)
        ...     del t[f"{p}.experts.1.w2.weight"]
        ...     _ = save_checkpoint(t, d)
        ...     Checkpoint(d)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: checkpoint ...: tensor '...experts.1.w2.weight' (layout mixtral, role w2) is
        missing; found under '...experts.1.': w1.weight, w3.weight
        >>> ckpt.layers, ckpt.n_experts, ckpt.hidden_size, layer.expert["w1"].shape, layer.dims["f"]
        (('model.layers.0',), 2, 4, (2, 3, 4), 3)
    """

    def __init__(self, path, layout=None):
        self.path = pathlib.Path(path)
        self._where, self.directory = _files(self.path)
        self.config = self._config()
        self._headers: dict = {}
        self.layout = self._pick_layout(layout)
        self.layers = self._find_layers(self.layout)
        if not self.layers:
            example = self.layout.tensors[self._router_role(self.layout)].template.replace(
                "{prefix}", self.layout.prefixes[0].replace("{layer}", "0")
            )
            raise ConfigError(
                "checkpoint",
                str(self.path),
                f"MoE layers of layout {self.layout.name}",
                message=f"checkpoint {self.path}: no MoE layer of layout {self.layout.name} "
                f"(router tensor like {example!r}); found {len(self._where)} tensors: "
                f"{_listing(self._where)}",
            )
        self._plans = [self._plan(prefix) for prefix in self.layers]
        first = self._plans[0][1]
        for prefix, (_, dims) in zip(self.layers, self._plans):
            if dims["N"] != first["N"] or dims["d"] != first["d"]:
                raise ConfigError(
                    "checkpoint",
                    str(self.path),
                    "the same N and d in every MoE layer",
                    message=f"checkpoint {self.path}: layer {prefix} has N={dims['N']}, d={dims['d']}; "
                    f"layer {self.layers[0]} has N={first['N']}, d={first['d']}",
                )
        self.n_experts, self.hidden_size = first["N"], first["d"]

    def __repr__(self) -> str:
        return (
            f"Checkpoint({str(self.path)!r}, layout={self.layout.name!r}, layers={len(self.layers)}, "
            f"N={self.n_experts}, d={self.hidden_size})"
        )

    def __len__(self) -> int:
        return len(self.layers)

    # ---- discovery -------------------------------------------------------------------------------

    def _config(self) -> dict:
        cfg = self.directory / "config.json"
        if not cfg.is_file():
            return {}
        try:
            return json.loads(cfg.read_text())
        except ValueError as err:
            raise ConfigError(
                "checkpoint",
                str(cfg),
                "a JSON config.json",
                message=f"checkpoint config {cfg} is not valid JSON ({err})",
            ) from None

    def _pick_layout(self, layout) -> layouts.Layout:
        if layout is not None:
            return layouts.get(layout)
        model_type = self.config.get("model_type")
        found = layouts.for_model_type(model_type) if model_type else None
        if found is not None:
            return found
        matching = [layouts.get(n) for n in layouts.names() if self._find_layers(layouts.get(n))]
        if len(matching) == 1:
            return matching[0]
        why = f"config.json model_type {model_type!r} is not registered" if model_type else "no config.json model_type"
        raise ConfigError(
            "layout",
            None,
            f"one of {', '.join(layouts.names())}",
            message=f"layout: {why} and the tensor names match "
            f"{len(matching)} layouts; pass one of {', '.join(layouts.names())}",
        )

    @staticmethod
    def _router_role(layout) -> str:
        return next(
            r
            for r, t in layout.tensors.items()
            if t.kind == "router" and not t.optional and not t.per_expert and "N" in t.shape and "d" in t.shape
        )

    def _find_layers(self, layout) -> tuple:
        router = layout.tensors[self._router_role(layout)].template
        found = []
        for rank, prefix in enumerate(layout.prefixes):
            parts = router.replace("{prefix}", prefix).split("{layer}")
            pattern = re.compile(r"(\d+)".join(re.escape(p) for p in parts) + r"\Z")
            for name in self._where:
                m = pattern.match(name)
                if m:
                    found.append((rank, int(m.group(1)), prefix.replace("{layer}", m.group(1))))
        return tuple(p for _, _, p in sorted(found))

    def _header(self, name: str):
        file = self._where[name]
        if file not in self._headers:
            if not file.is_file():
                raise ConfigError(
                    "checkpoint",
                    str(file),
                    "shard files named by the index",
                    message=f"checkpoint {self.directory}: shard {file.name} (named by {INDEX_FILE} "
                    f"for {name!r}) is missing",
                )
            self._headers[file] = _read_header(file)
        header = self._headers[file]
        if name not in header:
            raise ConfigError(
                "checkpoint",
                name,
                f"a tensor of {file.name}",
                message=f"checkpoint {self.directory}: {INDEX_FILE} puts {name!r} in {file.name}, "
                "which does not hold it",
            )
        return header[name]

    def _missing(self, name: str, role: str) -> ConfigError:
        parts = name.split(".")
        for k in range(len(parts) - 1, 0, -1):
            near = ".".join(parts[:k]) + "."
            siblings = [n for n in self._where if n.startswith(near)]
            if siblings:
                break
        else:
            near, siblings = "", list(self._where)
        return ConfigError(
            "checkpoint",
            name,
            f"a checkpoint of layout {self.layout.name}",
            message=f"checkpoint {self.path}: tensor {name!r} (layout {self.layout.name}, role "
            f"{role}) is missing; found under {near!r}: {_listing(siblings, near)}",
        )

    def _plan(self, prefix: str):
        """role -> list of tensor names (N for per-expert roles, 1 otherwise), and the bound dims."""
        lay = self.layout
        dims: dict = {}
        plan: dict = {}
        ordered = sorted(lay.tensors.items(), key=lambda rt: (rt[1].per_expert, rt[1].kind != "router"))
        for role, spec in ordered:  # router first: it binds N before the per-expert tensors are listed
            template = spec.template.replace("{prefix}", prefix)
            names = [template.replace("{e}", str(e)) for e in range(dims["N"])] if spec.per_expert else [template]
            absent = [n for n in names if n not in self._where]
            if absent:
                if spec.optional and len(absent) == len(names):
                    continue
                raise self._missing(absent[0], role)
            for name in names:
                shape, _ = self._header(name)
                self._bind(dims, spec.shape, shape, name)
            plan[role] = names
        message = lay.check(dims) if lay.check else None
        if message:
            raise ConfigError(
                "checkpoint",
                prefix,
                message,
                message=f"checkpoint {self.path}: layer {prefix} has {dims}; layout {lay.name} needs {message}",
            )
        return plan, dims

    def _bind(self, dims: dict, expected: tuple, shape: tuple, name: str) -> None:
        ok = len(expected) == len(shape)
        if ok:
            for sym, size in zip(expected, shape):
                if isinstance(sym, int):
                    ok = ok and sym == size
                elif dims.setdefault(sym, size) != size:
                    ok = False
        if not ok:
            want = "(" + ", ".join(f"{s}={dims[s]}" if s in dims else str(s) for s in expected) + ")"
            raise ConfigError(
                "checkpoint",
                name,
                f"shape {want}",
                message=f"checkpoint {self.path}: tensor {name!r} has shape {tuple(shape)}; "
                f"layout {self.layout.name} expects {want}",
            )

    # ---- reading ---------------------------------------------------------------------------------

    def files(self) -> dict:
        """The checkpoint's safetensors files (names relative to its directory) -> size in bytes."""
        return {
            str(f.relative_to(self.directory)) if f.is_relative_to(self.directory) else str(f): f.stat().st_size
            for f in sorted(set(self._where.values()))
            if f.is_file()
        }

    def tensor_names(self) -> tuple:
        """All tensor names of the checkpoint, sorted."""
        return tuple(sorted(self._where))

    def layer_nbytes(self, layer: int) -> int:
        """Bytes of layer `layer`'s tensors as stored (from the headers; nothing is read)."""
        total = 0
        for names in self._plans[layer][0].values():
            for n in names:
                shape, dtype = self._header(n)
                count = 1
                for s in shape:
                    count *= s
                total += count * _DTYPE_BYTES.get(dtype, 4)
        return total

    def read_layer(self, layer: int) -> LayerWeights:
        """Load MoE layer `layer` (0-based, forward order): its tensors only.

        Returns:
            LayerWeights with JAX arrays in the stored dtypes; per-expert tensors stacked to [N, ...].

        Raises:
            ConfigError: `layer` out of range, or a file that cannot be read.
        """
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(self.layers):
            raise ConfigError("layer", layer, f"an integer in [0, {len(self.layers) - 1}]")
        plan, dims = self._plans[layer]
        parts: dict = {k: {} for k in layouts.KINDS}
        for role, names in plan.items():  # one role at a time: peak = the layer + one role's tensors
            spec = self.layout.tensors[role]
            arrays = self._read(names)
            parts[spec.kind][role] = jnp.stack(arrays) if spec.per_expert else arrays[0]
            del arrays
        return LayerWeights(self.layers[layer], parts["expert"], parts["router"], parts["norm"], dict(dims))

    def _read(self, names: list) -> list:
        """The tensors `names` as JAX arrays in their stored dtype. Each is read with its own
        `safe_open` and the file closed after, so that no more than one tensor's pages stay mapped."""
        arrays = []
        for n in names:
            file = self._where[n]
            try:
                with safe_open(str(file), framework="flax") as f:
                    arrays.append(f.get_tensor(n))
            except (SafetensorError, OSError, ValueError) as err:
                raise _corrupted(file, err) from None
        return arrays

    def __iter__(self):
        """Layers in forward order, one `LayerWeights` at a time."""
        for layer in range(len(self.layers)):
            yield self.read_layer(layer)
