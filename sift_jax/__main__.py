"""`python -m sift_jax ...` runs the `sift-jax` command line (the kernel's own interpreter, no console script)."""

from sift_jax.cli import main

main()
