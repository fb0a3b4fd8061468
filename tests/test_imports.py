"""The package's import graph (every `import` in every module, function-level ones included, read with
`ast`) has no cycle, and no module imports a private name (`_x`) from another module."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "sift_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _type_checking_nodes(tree) -> set:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement of module `name`."""
    tree = ast.parse(MODULES[name].read_text())
    skip = _type_checking_nodes(tree)
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("sift_jax")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if not base.startswith("sift_jax"):
                continue
            names = [a.name for a in node.names]
            plain = [n for n in names if f"{base}.{n}" not in MODULES]
            if plain or base not in MODULES or MODULES[base].name != "__init__.py":
                out.append((base, plain))  # `from package import submodule` needs only the submodule
            out += [(f"{base}.{n}", []) for n in names if f"{base}.{n}" in MODULES]
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def _cycle(graph) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_checker_finds_a_planted_cycle():
    graph = _graph()
    assert graph["sift_jax.simulate"] and _cycle(graph | {"sift_jax.errors": {"sift_jax.simulate"}}) is not None


def test_no_import_cycle_inside_the_package():
    assert _cycle(_graph()) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_imported_from_another_module(module):
    private = [(src, n) for src, names in _imports(module) for n in names if n.startswith("_") and n != "__version__"]
    assert not private, f"{module} imports private names {private}"
