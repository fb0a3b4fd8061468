"""Training, evaluation and orbax checkpoints for the MoE language model.

Training is pure and deterministic in the seed: the batch of step s is drawn with
``fold_in(key(seed), s)``, so the result is the same whatever the chunk length (`eval_every`). Steps
run as a jitted ``lax.scan`` over `eval_every` steps; the validation loss is evaluated on the host
between chunks. Optimiser: optax AdamW (decoupled weight decay on matrices only) behind global-norm
clipping, with linear warm-up and cosine decay to 10% of the peak rate. The loss, accuracy and CPU time
of the default `MoEConfig` trained with the default `TrainConfig` are in BENCHMARKS.md ("MoE lab").

Checkpoint layout (a directory)::

    config.json        {"model": MoEConfig, "train": TrainConfig, "metrics": {...}, "corpus": {...}}
    params/            orbax StandardCheckpointer tree of the model's nnx.Param values (pure dict)
    calibration.npz    written by `sift_jax.moe.calibrate` (optional)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from sift_jax.errors import ConfigError
from sift_jax.moe import data as data_lib
from sift_jax.moe.model import MoEConfig, MoELM, init_model

__all__ = ["TrainConfig", "TrainResult", "evaluate", "load_checkpoint", "save_checkpoint", "tiny_train_config", "train"]

# Test threshold (tests/test_moe_train.py): `tiny_config()` trained with `tiny_train_config()` (200 steps of
# 16 x 32 bytes, ~30 s on 2 CPU cores) must reach a validation cross-entropy below this many nats per byte.
# Reference points: uniform bytes = ln 256 = 5.55 nats; the unigram byte model of the train split scores
# 3.19 nats on val, and always predicting the most frequent byte (space) gives accuracy 0.29.
TINY_VAL_LOSS_THRESHOLD = 2.8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimiser steps. batch_size: sequences per step (each `MoEConfig.context` bytes).
        lr: peak learning rate; warmup: linear warm-up steps; then cosine decay to lr / 10.
        weight_decay: AdamW decoupled decay (matrices and embeddings only). b1, b2: Adam moments.
        grad_clip: global-norm clip. seed: everything (init and batches) derives from it.
        eval_every: steps per jitted scan chunk; validation is evaluated after each chunk.
        eval_windows: validation windows (of `context` bytes) per evaluation.
        max_bytes_per_split: truncate each corpus split (None = whole corpus).
        time_budget_s: stop after the first chunk that ends past this wall time (None = no limit;
            the run is then no longer a function of the seed alone: the step count is recorded).

    Example:
        >>> tc = TrainConfig(steps=1000)
        >>> tc.steps * tc.batch_size                  # sequences seen in the run
        16000
        >>> TrainConfig(**tc.to_dict()) == tc
        True
        >>> TrainConfig(lr=0.0)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: lr = 0.0 is invalid: allowed is a number > 0
    """

    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_windows: int = 64
    max_bytes_per_split: int | None = None
    time_budget_s: float | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_windows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, v, "a positive integer")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError("warmup", self.warmup, "an integer >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", self.seed, "an integer >= 0")
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "a number > 0")

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)


def tiny_train_config(**overrides) -> TrainConfig:
    """Settings for tests and `quick_lab`: a few hundred small steps.

    Base values: 200 steps of 16 sequences, peak lr 1e-2 with 20 warm-up steps, validation every 100
    steps on 16 windows, each corpus split truncated to 200,000 bytes; every other field keeps its
    `TrainConfig` default.

    Args:
        **overrides: `TrainConfig` fields that replace the base values.

    Returns:
        TrainConfig.

    Example:
        >>> tc = tiny_train_config(seed=3)
        >>> tc.steps, tc.seed, tc.steps // tc.eval_every     # two validation points
        (200, 3, 2)
    """
    base = dict(
        steps=200, batch_size=16, lr=1e-2, warmup=20, eval_every=100, eval_windows=16, max_bytes_per_split=200_000
    )
    base.update(overrides)
    return TrainConfig(**base)


def split_params(model: MoELM):
    """(graphdef, params): the model's static graph and its nnx.Param state."""
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def loss_fn(params, graphdef, cfg: MoEConfig, inputs: jax.Array, targets: jax.Array):
    """Total loss = cross-entropy + lb_coef * load balance + z_coef * z-loss.

    Returns:
        (loss, metrics) with metrics "ce", "accuracy", "lb_loss", "z_loss".
    """
    model = nnx.merge(graphdef, params)
    logits, aux = model(inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == targets)
    loss = ce + cfg.lb_coef * aux["lb_loss"] + cfg.z_coef * aux["z_loss"]
    return loss, {"ce": ce, "accuracy": acc, "lb_loss": aux["lb_loss"], "z_loss": aux["z_loss"]}


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping + AdamW with warm-up/cosine schedule; decay only on ndim >= 2 leaves."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.lr, max(tc.warmup, 1), max(tc.steps, tc.warmup + 1), end_value=tc.lr / 10
    )
    mask = lambda p: jax.tree.map(lambda a: jnp.ndim(a) >= 2, p)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(tc.grad_clip),
        optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=mask),
    )


def make_train_chunk(graphdef, cfg: MoEConfig, tc: TrainConfig) -> Callable:
    """A jitted function (params, opt_state, train_tokens, first_step, seed, n_steps static) -> (params,
    opt_state, metrics[n_steps]) running `n_steps` AdamW steps (`make_optimizer(tc)`) in a `lax.scan`;
    the batch of step s is drawn with fold_in(key(seed), s). Cached per (model structure, optimiser
    settings): the seed, evaluation and data settings of `tc` do not trigger a new compilation."""
    return _train_chunk(
        graphdef,
        cfg,
        dataclasses.replace(tc, seed=0, eval_every=1, eval_windows=1, max_bytes_per_split=None, time_budget_s=None),
    )


@functools.lru_cache(maxsize=8)
def _train_chunk(graphdef, cfg: MoEConfig, tc: TrainConfig) -> Callable:
    opt = make_optimizer(tc)

    def step(carry, s):
        params, opt_state, tokens, base_key = carry
        x, y = data_lib.random_windows(jax.random.fold_in(base_key, s), tokens, tc.batch_size, cfg.context)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, graphdef, cfg, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, tokens, base_key), dict(metrics, loss=loss)

    def chunk(params, opt_state, tokens, first_step, seed, n_steps):
        steps = first_step + jnp.arange(n_steps)
        carry = (params, opt_state, tokens, jax.random.key(seed))
        (params, opt_state, _, _), metrics = jax.lax.scan(step, carry, steps)
        return params, opt_state, metrics

    return jax.jit(chunk, static_argnums=5, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=8)
def make_eval(graphdef, cfg: MoEConfig) -> Callable:
    """Jitted (params, inputs int32[B, T], targets) -> (sum of CE, number correct) over all bytes."""

    def ev(params, x, y):
        model = nnx.merge(graphdef, params)
        logits, _ = model(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return ce.sum(), jnp.sum(jnp.argmax(logits, -1) == y)

    return jax.jit(ev)


def evaluate(model: MoELM, tokens: np.ndarray, n_windows: int | None = 64, batch: int = 32) -> dict:
    """Mean next-byte cross-entropy (nats) and accuracy on evenly spaced windows of `tokens`.

    Args:
        model: the model to score.
        tokens: uint8[n] token stream (a corpus split).
        n_windows: non-overlapping windows of `model.cfg.context` bytes, evenly spaced (None = all
            that fit); `ConfigError` if more than fit.
        batch: windows per jitted forward call.

    Returns:
        {"loss": mean cross-entropy (nats/byte), "accuracy": fraction of next bytes predicted by the
        argmax, "bits_per_byte": loss / ln 2, "n_bytes": int, bytes scored = n_windows * context}.

    Example:
        A model with all-zero weights predicts uniform logits: its loss is ln 256 nats = 8 bits per
        byte, and its argmax, byte 0, never matches these tokens. (The weights are set without running
        the random initialisers, which keeps the example fast; `init_model` or `train` give real ones.)

        >>> from sift_jax.moe.model import tiny_config
        >>> model = nnx.eval_shape(lambda: init_model(tiny_config()))          # T = 32
        >>> nnx.update(model, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nnx.state(model)))
        >>> ev = evaluate(model, np.arange(1, 101, dtype=np.uint8), n_windows=3)
        >>> round(ev["loss"], 4), round(float(ev["bits_per_byte"]), 4), ev["accuracy"], ev["n_bytes"]
        (5.5452, 8.0, 0.0, 96)
    """
    cfg = model.cfg
    graphdef, params = split_params(model)
    ev = make_eval(graphdef, cfg)
    x, y = data_lib.eval_windows(tokens, cfg.context, n_windows)
    tot, cor = 0.0, 0
    for i in range(0, x.shape[0], batch):
        s, c = ev(params, jnp.asarray(x[i : i + batch]), jnp.asarray(y[i : i + batch]))
        tot += float(s)
        cor += int(c)
    n = int(y.size)
    return {"loss": tot / n, "accuracy": cor / n, "bits_per_byte": tot / n / np.log(2), "n_bytes": n}


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the trained model, per-step metrics and a JSON-ready summary.

    Attributes:
        model: the trained `MoELM`.
        history: metric -> float32[steps], one value per optimiser step: "loss" (total training
            loss), "ce" (cross-entropy, nats/byte), "accuracy", "lb_loss", "z_loss".
        summary: see `train` (JSON-ready).

    Example:
        >>> [f.name for f in dataclasses.fields(TrainResult)]
        ['model', 'history', 'summary']
    """

    model: MoELM
    history: dict  # metric -> float[steps]
    summary: dict


def train(
    cfg: MoEConfig = MoEConfig(),
    tc: TrainConfig = TrainConfig(),
    corpus: data_lib.Corpus | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train a fresh model (deterministic in `tc.seed`).

    Args:
        cfg: model configuration. tc: training configuration.
        corpus: the byte corpus (default `data.load_corpus(max_bytes_per_split=tc.max_bytes_per_split)`).
        progress: optional callback (steps_done, metrics) after every chunk.

    Returns:
        TrainResult; `summary` holds steps, train_time_s (s, compile included), train_ce_last (mean
        training cross-entropy of the last up to 20 steps, nats/byte), val_loss (nats/byte),
        val_accuracy, val_bits_per_byte, evals (one `evaluate` dict per chunk, with "step" and
        "time_s") and backend.

    Example:
        Two steps of the tiny model. The training call is skipped in the doctests: compiling the
        jitted training chunk takes about 10 s of CPU time (`tests/test_moe_train.py` runs it).

        >>> from sift_jax.moe.model import tiny_config
        >>> tc = tiny_train_config(steps=2, eval_every=1, eval_windows=1, max_bytes_per_split=10_000)
        >>> tc.steps, tc.eval_every, tc.batch_size
        (2, 1, 16)
        >>> res = train(tiny_config(), tc)  # doctest: +SKIP
        >>> res.history["ce"].shape, [e["step"] for e in res.summary["evals"]]  # doctest: +SKIP
        ((2,), [1, 2])
    """
    if corpus is None:
        corpus = data_lib.load_corpus(max_bytes_per_split=tc.max_bytes_per_split)
    model = init_model(cfg, tc.seed)
    graphdef, params = split_params(model)
    opt = make_optimizer(tc)
    opt_state = opt.init(params)
    chunk = make_train_chunk(graphdef, cfg, tc)
    tokens = jnp.asarray(corpus.train)
    history: dict[str, list] = {}
    evals = []
    t0 = time.perf_counter()
    done = 0
    while done < tc.steps:
        n = min(tc.eval_every, tc.steps - done)
        params, opt_state, metrics = chunk(params, opt_state, tokens, jnp.int32(done), jnp.uint32(tc.seed), n)
        done += n
        for k, v in metrics.items():
            history.setdefault(k, []).append(np.asarray(v))
        model = nnx.merge(graphdef, params)
        ev = evaluate(model, corpus.val, min(tc.eval_windows, (corpus.val.size - 1) // cfg.context))
        ev["step"] = done
        ev["time_s"] = time.perf_counter() - t0
        evals.append(ev)
        if progress is not None:
            progress(done, {"train_loss": float(np.mean(history["ce"][-1][-10:])), **ev})
        if tc.time_budget_s is not None and ev["time_s"] > tc.time_budget_s:
            break
    elapsed = time.perf_counter() - t0
    hist = {k: np.concatenate(v) for k, v in history.items()}
    summary = {
        "steps": done,
        "train_time_s": elapsed,
        "train_ce_last": float(np.mean(hist["ce"][-max(1, min(20, done)) :])),
        "val_loss": evals[-1]["loss"],
        "val_accuracy": evals[-1]["accuracy"],
        "val_bits_per_byte": evals[-1]["bits_per_byte"],
        "evals": evals,
        "backend": jax.default_backend(),
    }
    return TrainResult(model=nnx.merge(graphdef, params), history=hist, summary=summary)


# ---------------------------------------------------------------------------------------- checkpoints


def _abs(path) -> pathlib.Path:
    return pathlib.Path(path).expanduser().resolve()


def save_checkpoint(path, model: MoELM, meta: dict | None = None) -> pathlib.Path:
    """Write `model` (orbax, params/) and `config.json` (model config + `meta`) under directory `path`.

    Overwrites an existing checkpoint there.

    Args:
        path: checkpoint directory (created if missing).
        model: the model to save.
        meta: extra JSON-ready entries for config.json (`train` stores "train", "metrics", "corpus").

    Returns:
        pathlib.Path: the absolute path of the checkpoint directory.

    Example:
        A model with all-zero weights (set without running the random initialisers, to keep the
        example fast), saved into a temporary directory:

        >>> import tempfile
        >>> from sift_jax.moe.model import tiny_config
        >>> model = nnx.eval_shape(lambda: init_model(tiny_config()))
        >>> nnx.update(model, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nnx.state(model)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     ckpt = save_checkpoint(pathlib.Path(d) / "ckpt", model, {"note": "zeros"})
        ...     meta = json.loads((ckpt / "config.json").read_text())
        ...     ckpt.is_absolute(), (ckpt / "params").is_dir(), meta["note"], meta["model"]["n_experts"]
        (True, True, 'zeros', 4)
    """
    path = _abs(path)
    path.mkdir(parents=True, exist_ok=True)
    _, params = split_params(model)
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    with ocp.StandardCheckpointer() as ck:
        ck.save(path / "params", pure, force=True)
        ck.wait_until_finished()
    doc = {"model": model.cfg.to_dict(), **(meta or {})}
    (path / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=_json_default))
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_checkpoint(path) -> tuple[MoELM, dict]:
    """Restore (model, config.json contents) from a directory written by `save_checkpoint`.

    Args:
        path: the checkpoint directory.

    Returns:
        (MoELM, dict): the model (float32 parameters as saved) and the parsed config.json ("model"
        holds the `MoEConfig` fields, plus whatever `meta` the checkpoint was saved with).

    Raises:
        ConfigError: `path` holds no config.json and params/.

    Example:
        A round trip of a model whose weights are all 0.5 (set without running the random
        initialisers, to keep the example fast):

        >>> import tempfile
        >>> from sift_jax.moe.model import tiny_config
        >>> model = nnx.eval_shape(lambda: init_model(tiny_config()))
        >>> nnx.update(model, jax.tree.map(lambda a: np.full(a.shape, 0.5, a.dtype), nnx.state(model)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(d, model, {"note": "halves"})
        ...     loaded, meta = load_checkpoint(d)
        >>> loaded.cfg == model.cfg, meta["note"], float(loaded.blocks[1].moe.router[...].mean())
        (True, 'halves', 0.5)
        >>> load_checkpoint("no/such/checkpoint")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: checkpoint = '...' is invalid: allowed is a directory holding config.json...
    """
    path = _abs(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file() or not (path / "params").is_dir():
        raise ConfigError("checkpoint", str(path), "a directory holding config.json and params/ (from moe train)")
    meta = json.loads(cfg_file.read_text())
    cfg = MoEConfig.from_dict(meta["model"])
    abstract = nnx.eval_shape(lambda: init_model(cfg, 0))
    graphdef, abs_params = split_params(abstract)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.to_pure_dict(abs_params))
    with ocp.StandardCheckpointer() as ck:
        restored = ck.restore(path / "params", target)
    nnx.replace_by_pure_dict(abs_params, jax.tree.map(jnp.asarray, restored))
    return nnx.merge(graphdef, abs_params), meta
