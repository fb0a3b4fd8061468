"""The documentation contract: every module names its public API in `__all__`, and every public function
or class there has a Google-style docstring with a doctest example (the examples run in `make test`
through `--doctest-modules`). Names outside `__all__` are internal helpers.
"""

import importlib
import inspect
import pkgutil

import pytest

import sift_jax

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(sift_jax.__path__, "sift_jax.") if not m.name.endswith("__main__")
)


def _public_objects(module):
    mod = importlib.import_module(module)
    assert hasattr(mod, "__all__"), f"{module} has no __all__"
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield name, obj


def _takes_arguments(fn) -> bool:
    return any(p.name not in ("self", "cls") for p in inspect.signature(fn).parameters.values())


@pytest.mark.parametrize("module", MODULES)
def test_public_names_have_google_docstrings_with_examples(module):
    problems = []
    for name, obj in _public_objects(module):
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc:
            problems.append(f"{name}: no doctest example")
        if inspect.isfunction(obj) and _takes_arguments(obj) and "Args:" not in doc:
            problems.append(f"{name}: no 'Args:' section")
        if (
            inspect.isfunction(obj)
            and inspect.signature(obj).return_annotation not in (None, "None")
            and "Returns:" not in doc
            and "Yields:" not in doc
            and "Raises:" not in doc
        ):
            problems.append(f"{name}: no 'Returns:' section")
    assert not problems, f"{module}: " + "; ".join(problems)


def test_every_module_is_checked():
    assert "sift_jax.policies.decode" in MODULES and "sift_jax.moe.train" in MODULES
    assert len(MODULES) >= 30


def test_readme_python_quickstart_runs(tmp_path, monkeypatch):
    """The README's Python quickstart runs as written, with its sample counts cut down (and the sweep's
    output directory moved to a temporary folder)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("## Quickstart (Python)", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "sj.simulate(" in block and "sj.sweep.run(" in block
    code = re.sub(r"samples=[0-9_]+", "samples=2", block).replace('out="results"', f'out=r"{tmp_path}"')
    monkeypatch.chdir(root)
    namespace: dict = {}
    exec(compile(code, "README.md quickstart", "exec"), namespace)
    assert (
        namespace["res"].metrics["energy_per_token_j"].n + namespace["res"].metrics["energy_per_token_j"].n_invalid == 2
    )
    assert (tmp_path / "fig5a.nc").exists() and int(namespace["ds"].attrs["samples"]) == 2
