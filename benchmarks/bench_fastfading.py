"""Fast-fading bit loading: decisions per second and energy savings on the paper presets.

Run: `.venv/bin/python benchmarks/bench_fastfading.py [--quick] [--samples S] [--layers L]`.

1. Throughput. One "decision" is the bit loading of one layer of one sample: all N-1 = 7 helper links,
   Q = 80 slots (the presets' cap), from normalised loads, slot counts and slot gains generated beforehand
   (Mixtral decode-like: 1 token per helper, Q_n from the preset's slot plan). Timed with jit + vmap over
   a batch, `block_until_ready`, compile excluded, best of a few repeats. Also the one-off DP table build.
2. Energy. `fastfading.layer_decision_with_info` for S samples x L layers of each preset (switch-base-8,
   Mixtral-8x7B), decoding (M = 1) and a short prefill, siftmoe selection on the surrogate, with the same
   channel and gate draws for every bit loading (common random numbers: the selection does not depend on
   the bit loading, so the savings are paired). Reports the mean realised energy per token with a 95% CI,
   the median, the paired savings of dp over closed-form and of both over uniform (ratio of means, with a
   CI from the paired per-sample differences), eq. (27)'s mean, and how often the slot cap binds.
Prints markdown tables naming the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp

from benchmarks.common import best_time, machine
from sift_jax import channel, gating, presets, similarity
from sift_jax.policies import fastfading as ff
from sift_jax.policies import fastfading_bits as fb

RULES = ("uniform", "closed-form", "dp")


def throughput(batch: int, repeats: int) -> list[tuple[str, float]]:
    sc = presets.get("mixtral-8x7b")
    q_cap = sc.n_slots
    t0 = time.perf_counter()
    tab = fb.dp_tables(float(sc.fading_shape), q_cap)
    build_s = time.perf_counter() - t0
    key = jax.random.key(0)
    k1, k2 = jax.random.split(key)
    dist = channel.draw_distances(k1, sc)
    plan = ff.slot_plan(sc, dist, jnp.ones(sc.n_helpers, jnp.int32))
    x = sc.hidden_bits / (sc.bandwidth_hz * plan.slot_s)
    xs = jnp.broadcast_to(x, (batch, sc.n_helpers))
    qs = jnp.broadcast_to(plan.slots, (batch, sc.n_helpers))
    gains = channel.draw_fading(k2, sc, (batch, sc.n_helpers, q_cap))
    fns = {
        "uniform": jax.jit(lambda a, g, q: fb.uniform_bits(a, g, q)),
        "closed-form": jax.jit(lambda a, g, q: fb.closed_form_bits(a, g, q, 2.0)),
        "dp": jax.jit(lambda a, g, q: fb.dp_bits(a, g, q, tab)),
    }
    rows = [("dp table build (Q = 80, one-off, s)", build_s)]
    for name, fn in fns.items():
        t = best_time(fn, xs, gains, qs, repeats=repeats)
        rows.append((f"{name}: decisions/s (7 links x {q_cap} slots)", batch / t))
    return rows


def energies(name: str, n_tokens: int, samples: int, layers: int, seed: int = 0) -> dict:
    sc = presets.get(name).replace(n_tokens=n_tokens, n_layers=layers)
    tables = similarity.synthetic_tables(sc)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(samples))

    def sample(key, bits):
        k_ch, k_g = jax.random.split(key)
        ch = channel.draw(k_ch, sc, fast=True)
        g, topk = gating.draw(k_g, sc)

        def layer(gain, gg, tk, tab):
            dec, info = ff.layer_decision_with_info(sc, ch.distance_m, gain, gg, tk, tab, "siftmoe", bits)
            e_h = info.helper_energy_j
            uplink = jnp.sum(jnp.where(jnp.isfinite(e_h), e_h, 0.0))
            user = dec.energy_j - uplink
            return dec.energy_j, uplink, info.paper_estimate_j - user, dec.feasible, info.cap_bound.any()

        e, up, paper, ok, capped = jax.vmap(layer)(ch.gain, g, topk, tables)
        return e.sum() / n_tokens, up.sum() / n_tokens, paper.sum() / n_tokens, ok.all(), capped.any()

    out = {}
    for bits in RULES:
        fn = jax.jit(jax.vmap(lambda k, bits=bits: sample(k, bits)))
        t0 = time.perf_counter()
        res = jax.block_until_ready(fn(keys))
        out[bits] = [np.asarray(r, np.float64) for r in res] + [time.perf_counter() - t0]  # + time (s)
    return out


def stat(v):
    return v.mean(), 1.96 * v.std(ddof=1) / math.sqrt(v.size)


def saving(base, new):
    """1 - mean(new)/mean(base) with a delta-method 95% CI from the paired samples."""
    r = new.mean() / base.mean()
    d = new - r * base
    se = d.std(ddof=1) / math.sqrt(d.size) / base.mean()
    return 1.0 - r, 1.96 * se


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    args = ap.parse_args()
    samples = args.samples or (64 if args.quick else 512)
    layers = args.layers or (2 if args.quick else 4)
    batch = 256 if args.quick else 2048
    print(f"Machine: {machine()}\n")
    print("| bit loading | value |\n|---|---|")
    for label, v in throughput(batch, 2 if args.quick else 5):
        print(f"| {label} | {v:,.3g} |")
    print()
    cases = [("switch-base-8", 1), ("mixtral-8x7b", 1), ("switch-base-8", 8), ("mixtral-8x7b", 4)]
    if args.quick:
        cases = cases[:2]
    print(
        f"Realised uplink energy per token (J; eq. (22) summed over helpers and slots), siftmoe selection on "
        f"the surrogate, {samples} samples x {layers} layers, mean +- 95% CI over feasible samples (the selection, "
        "hence feasibility, is the same for every rule); savings are paired (ratio of means, delta-method CI); "
        "total = uplink + the user's local energy, closed-form rule\n"
    )
    print(
        "| preset | M | uniform | closed-form | dp | eq. (27) | dp vs cf | cf vs uniform | dp vs uniform | "
        "median u / cf / dp | total (cf) | cap binds | infeasible | time (s) u / cf / dp |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in cases:
        out = energies(name, m, samples, layers)
        ok = out["uniform"][3] > 0
        u, cf, dp = (out[b][1][ok] for b in RULES)
        paper = out["closed-form"][2][ok]
        total = out["closed-form"][0][ok]
        fmt = lambda v: "{:.4g} +- {:.2g}".format(*stat(v))  # noqa: E731
        sv = lambda a, b: "{:.1f}% +- {:.1f}".format(*tuple(100 * np.array(saving(a, b))))  # noqa: E731
        med = " / ".join(f"{np.median(v):.3g}" for v in (u, cf, dp))
        times = " / ".join(f"{out[b][5]:.0f}" for b in RULES)
        print(
            f"| {name} | {m} | {fmt(u)} | {fmt(cf)} | {fmt(dp)} | {fmt(paper)} | {sv(cf, dp)} | {sv(u, cf)} | "
            f"{sv(u, dp)} | {med} | {fmt(total)} | {out['uniform'][4].mean():.3f} | {1 - ok.mean():.3f} | {times} |"
        )


if __name__ == "__main__":
    main()
