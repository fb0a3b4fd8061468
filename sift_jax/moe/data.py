"""Offline byte-level text corpus: the running interpreter's standard library sources.

Corpus rule (deterministic, no download): every file matching ``*.py`` directly in the directory
``sysconfig.get_paths()["stdlib"]`` (no sub-packages), sorted by file name (code-point order).
File ``i`` of that list goes to

- ``val``   if ``i % 10 == 8``,
- ``test``  if ``i % 10 == 9``,
- ``train`` otherwise,

so no file is shared between splits. A split's token stream is the concatenation of its files' raw
bytes, each file followed by one ``0`` byte (a document separator; the sources contain no NUL).
Tokens are bytes: vocabulary 256.

Size on CPython 3.11.7 (the interpreter this project was developed with): 168 files, 4.70 MB in all;
train 134 files / 3.93 MB, val 17 files / 0.35 MB, test 17 files / 0.41 MB. Another interpreter
version gives a slightly different corpus; `Corpus.describe()` records the exact one used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import platform
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np

from sift_jax.errors import ConfigError

__all__ = ["Corpus", "load_corpus"]

VOCAB_SIZE = 256
SEPARATOR = 0
SPLITS = ("train", "val", "test")


def stdlib_dir() -> pathlib.Path:
    """The running interpreter's standard-library directory (``sysconfig`` "stdlib" path)."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """Sorted ``*.py`` files directly in `root` (default: the stdlib directory).

    >>> files = corpus_files()
    >>> len(files) > 50, files == sorted(files)
    (True, True)
    """
    root = stdlib_dir() if root is None else pathlib.Path(root)
    files = sorted((p for p in root.glob("*.py") if p.is_file()), key=lambda p: p.name)
    if not files:
        raise ConfigError("corpus_root", str(root), "a directory holding *.py files")
    return files


def split_of(index: int) -> str:
    """Split of the file at position `index` in the sorted list (``i % 10``: 8 val, 9 test, else train).

    >>> [split_of(i) for i in (0, 7, 8, 9, 10)]
    ['train', 'train', 'val', 'test', 'train']
    """
    r = index % 10
    return "val" if r == 8 else "test" if r == 9 else "train"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Byte tokens of the three splits (what `load_corpus` returns).

    Attributes:
        train, val, test: uint8[n_bytes] token streams (file bytes + a 0 separator after each file).
        files: split -> tuple of file names in the split.
        root: the directory the files came from.

    Example:
        A hand-made corpus (normally `load_corpus` builds it):

        >>> t = np.frombuffer(b"print(1)\\x00", np.uint8)
        >>> c = Corpus(train=t, val=t[:4], test=t[:2], files={s: () for s in SPLITS}, root=".")
        >>> bytes(c.split("val"))
        b'prin'
        >>> d = c.describe()
        >>> d["train_bytes"], d["val_sha256"] == hashlib.sha256(b"prin").hexdigest()
        (9, True)
        >>> c.split("dev")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: split = 'dev' is invalid: allowed is one of train, val, test
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    files: dict
    root: str

    def split(self, name: str) -> np.ndarray:
        """Token stream of split `name` ("train", "val" or "test")."""
        if name not in SPLITS:
            raise ConfigError("split", name, "one of train, val, test")
        return getattr(self, name)

    def describe(self) -> dict:
        """JSON-ready description: interpreter, rule, file counts, bytes and a SHA-256 per split."""
        return {
            "source": "python standard library *.py (top level, sorted by name)",
            "root": self.root,
            "python": platform.python_version(),
            "rule": "file i -> val if i%10==8, test if i%10==9, else train; 0 byte after each file",
            "vocab_size": VOCAB_SIZE,
            **{f"{s}_files": len(self.files[s]) for s in SPLITS},
            **{f"{s}_bytes": int(self.split(s).size) for s in SPLITS},
            **{f"{s}_sha256": hashlib.sha256(self.split(s).tobytes()).hexdigest() for s in SPLITS},
        }


def load_corpus(root: str | pathlib.Path | None = None, max_bytes_per_split: int | None = None) -> Corpus:
    """Read the corpus (see the module docstring for the rule).

    Args:
        root: directory of ``*.py`` files; default the interpreter's stdlib directory.
        max_bytes_per_split: keep only the first this many bytes of each split (None = all).

    Returns:
        Corpus: uint8[n_bytes] token streams per split (bytes), the file names and the root.

    Raises:
        ConfigError: no ``*.py`` file in `root`, too few files for every split (< 10), or a bad
            `max_bytes_per_split`.

    Example:
        The split rule on ten small files (m8.py goes to val, m9.py to test):

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for i in range(10):
        ...         _ = (pathlib.Path(d) / f"m{i}.py").write_bytes(b"x = %d\\n" % i)
        ...     c = load_corpus(d)
        >>> c.files["val"], c.files["test"], len(c.files["train"])
        (('m8.py',), ('m9.py',), 8)
        >>> bytes(c.val)                     # the file's bytes, then the 0 separator
        b'x = 8\\n\\x00'

        The default corpus, the interpreter's standard library, truncated:

        >>> c = load_corpus(max_bytes_per_split=1000)
        >>> c.train.dtype, c.train.size, c.val.size
        (dtype('uint8'), 1000, 1000)
    """
    if max_bytes_per_split is not None and (not isinstance(max_bytes_per_split, int) or max_bytes_per_split < 2):
        raise ConfigError("max_bytes_per_split", max_bytes_per_split, "None or an integer >= 2")
    files = corpus_files(root)
    chunks = {s: [] for s in SPLITS}
    names = {s: [] for s in SPLITS}
    for i, path in enumerate(files):
        s = split_of(i)
        chunks[s].append(path.read_bytes() + bytes([SEPARATOR]))
        names[s].append(path.name)
    arrays = {}
    for s in SPLITS:
        if not chunks[s]:
            raise ConfigError("corpus_root", str(root), f"a directory with enough files for a {s} split (>= 10)")
        data = np.frombuffer(b"".join(chunks[s]), dtype=np.uint8)
        arrays[s] = data[:max_bytes_per_split].copy() if max_bytes_per_split else data.copy()
    return Corpus(**arrays, files={s: tuple(names[s]) for s in SPLITS}, root=str(files[0].parent))


def random_windows(key: jax.Array, tokens: jax.Array, batch_size: int, context: int):
    """Draw `batch_size` random windows of `context` + 1 bytes (pure, jit-able).

    Args:
        key: typed PRNG key.
        tokens: uint8 or int32[n] token stream (n > context).
        batch_size, context: static sizes.

    Returns:
        (inputs, targets): int32[batch_size, context] each; targets are inputs shifted by one byte.

    >>> x, y = random_windows(jax.random.key(0), jnp.arange(100) % 256, 2, 8)
    >>> bool((x[:, 1:] == y[:, :-1]).all()), x.shape
    (True, (2, 8))
    """
    n = tokens.shape[0]
    starts = jax.random.randint(key, (batch_size,), 0, n - context)
    idx = starts[:, None] + jnp.arange(context + 1)[None, :]
    window = jnp.take(tokens, idx, axis=0).astype(jnp.int32)
    return window[:, :-1], window[:, 1:]


def eval_windows(tokens: np.ndarray, context: int, n_windows: int | None = None):
    """Deterministic, evenly spaced, non-overlapping evaluation windows.

    Args:
        tokens: uint8[n] token stream.
        context: window length T.
        n_windows: how many (default: all that fit without overlap).

    Returns:
        (inputs, targets): int32[n_windows, context] (NumPy).

    >>> x, y = eval_windows(np.arange(50, dtype=np.uint8), 4, 3)
    >>> x.tolist()[0], y.tolist()[0]
    ([0, 1, 2, 3], [1, 2, 3, 4])
    """
    n_fit = (tokens.size - 1) // context
    if n_fit < 1:
        raise ConfigError("context", context, f"a window length < the split size {tokens.size}")
    n = n_fit if n_windows is None else int(n_windows)
    if not 1 <= n <= n_fit:
        raise ConfigError("n_windows", n_windows, f"an integer in [1, {n_fit}]")
    starts = (np.arange(n) * (n_fit // n)) * context
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    window = tokens[idx].astype(np.int32)
    return window[:, :-1], window[:, 1:]
