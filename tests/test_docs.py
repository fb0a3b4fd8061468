"""The documentation contract: every module names its public API in `__all__`, and every public function
or class there has a Google-style docstring with a doctest example (the examples run in `make test`
through `--doctest-modules`). Names outside `__all__` are internal helpers.
"""

import importlib
import inspect
import pkgutil

import pytest

import sift_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(sift_jax.__path__, "sift_jax.") if not m.name.endswith("__main__"))


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
        if inspect.isfunction(obj) and inspect.signature(obj).return_annotation not in (None, "None") \
                and "Returns:" not in doc and "Yields:" not in doc and "Raises:" not in doc:
            problems.append(f"{name}: no 'Returns:' section")
    assert not problems, f"{module}: " + "; ".join(problems)


def test_every_module_is_checked():
    assert "sift_jax.policies.decode" in MODULES and "sift_jax.moe.train" in MODULES
    assert len(MODULES) >= 30
