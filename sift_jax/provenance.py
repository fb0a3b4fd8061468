"""What produced a result: versions, backend, devices, PRNG, precision and git revision."""

from __future__ import annotations

import functools
import pathlib
import platform
import subprocess

import jax

__all__ = ["provenance"]


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    """The package's git revision (with '+dirty' for local changes), or 'unknown' outside a checkout."""
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict:
    """Versions and run environment as a flat dict of strings/numbers.

    Stored in every `SimResult.provenance` and in the attributes of every sweep dataset.

    Returns:
        {"sift_jax_git", "jax", "jaxlib", "flax", "python", "backend", "device_count", "prng_impl", "x64"}:
        version strings, the git revision ('+dirty' for local changes, 'unknown' outside a checkout),
        the JAX backend name, the device count (int) and whether float64 is on (bool).

    Example:
        >>> import jax
        >>> p = provenance()
        >>> p["jax"] == jax.__version__, p["backend"] == jax.default_backend(), p["x64"] is jax.config.jax_enable_x64
        (True, True, True)
        >>> all(isinstance(v, (str, int, bool)) for v in p.values())
        True
    """
    import flax
    import jaxlib

    return {
        "sift_jax_git": git_revision(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "x64": bool(jax.config.jax_enable_x64),
    }
