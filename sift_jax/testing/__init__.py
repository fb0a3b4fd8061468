"""Independent references for the tests and benchmarks (not used by the engine itself).

`numpy_reference` holds float64 NumPy formulations written straight from the paper's equations, sharing
no code with the JAX implementation: the channel, latency and energy model, exact decoding by node-set
enumeration, feasible prefill node sets, and random instance generators. Import it explicitly
(`from sift_jax.testing import numpy_reference as ref`); importing `sift_jax` does not load it.

>>> from sift_jax.testing import numpy_reference as ref
>>> callable(ref.decode_numpy)
True
"""

__all__: list[str] = []
