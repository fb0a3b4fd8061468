"""Structural checks of the notebooks (fast); executing them is `pytest --nbmake notebooks/`.

The notebooks are committed WITH their outputs, executed top to bottom at quick sizes, so a reader browsing
them sees the figures: `SIFT_QUICK=1 .venv/bin/jupyter execute --inplace notebooks/NAME.ipynb` (or
`jupyter nbconvert --to notebook --execute --inplace`). nbmake does not write outputs back.

Where the notebooks are executed: `make test` (which `.ci/run` calls) runs this file among the other tests and
then, as its second step, `SIFT_QUICK=1 pytest -n 2 --nbmake notebooks` (the Makefile's `test` target), which
executes every cell, the final `assert` cells included; `test_make_test_executes_the_notebooks` checks that
this is still so. Executing them here as well would run them twice in CI, so `test_notebook_executes_quick`
(nbclient, quick sizes) is skipped unless SIFT_RUN_NOTEBOOKS=1.

Notebooks 02-04 end with a "Checks" code cell of `assert`s on their headline numbers (facts independent of
the run: identities, monotonicity on common random numbers, closed forms). A checks cell appended after the
stored run may carry no output yet (execution count null) until the notebook's outputs are stored again.
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_reproduce_paper.ipynb",
    "03_bound_tightness.ipynb",
    "04_fast_fading.ipynb",
    "05_custom_sweep.ipynb",
    "06_real_model.ipynb",
)
WITH_CHECKS = ("02_reproduce_paper.ipynb", "03_bound_tightness.ipynb", "04_fast_fading.ipynb", "06_real_model.ipynb")
NETWORK = re.compile(
    r"https?://|urllib|requests\.|urlretrieve|wget|curl |pip install|snapshot_download|hf_hub_download|datasets\.load"
)


def _read(name):
    return nbformat.read(str(ROOT / name), as_version=4)


def _code(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_every_notebook_is_listed_and_present():
    assert sorted(p.name for p in ROOT.glob("*.ipynb")) == sorted(NOTEBOOKS)
    readme = (ROOT / "README.md").read_text()
    for name in NOTEBOOKS:
        assert name in readme


MAX_BYTES = 1_000_000  # stored outputs stay small: a few PNG figures and tables, no large text dumps


def _texts(output) -> list[str]:
    """Every text an output carries (stream text, error traceback, text/* data)."""
    if output.output_type == "stream":
        return [output.text]
    if output.output_type == "error":
        return [output.ename, output.evalue, *output.traceback]
    return [v for k, v in output.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_committed_with_quick_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    # executed top to bottom in one fresh kernel: execution counts 1, 2, ..., n in cell order; only a final
    # checks cell added after the stored run (asserts, no output) may be unexecuted
    counts = [c.execution_count for c in code]
    if counts[-1] is None and name in WITH_CHECKS:
        assert not code[-1].outputs and "assert " in code[-1].source, f"{name}: unexecuted cell is not a checks cell"
        counts = counts[:-1]
    assert counts == list(range(1, len(code) + 1))[: len(counts)] and len(counts) >= len(code) - 1, (
        f"{name}: not executed in order in one run: {counts}"
    )
    outputs = [o for c in code for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{name}: committed with an error output: {[(o.ename, o.evalue) for o in errors]}"
    tracebacks = [t[:200] for o in outputs for t in _texts(o) if "Traceback (most recent call last)" in t]
    assert not tracebacks, f"{name}: an output holds a traceback: {tracebacks}"
    images = [
        o
        for o in outputs
        if o.output_type in ("display_data", "execute_result")
        and any(k.startswith("image/") for k in o.get("data", {}))
    ]
    assert images, f"{name}: committed without any figure output"
    # the stored run is the quick one (the first code cell reports the mode)
    first = "".join(t for o in code[0].outputs for t in _texts(o))
    assert "quick mode" in first, f"{name}: outputs not from a SIFT_QUICK=1 run: {first!r}"
    assert (ROOT / name).stat().st_size < MAX_BYTES, f"{name}: stored outputs too large"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_reads_sift_quick_and_stays_offline(name):
    code = _code(_read(name))
    assert 'os.environ.get("SIFT_QUICK"' in code
    assert "QUICK" in code.split('os.environ.get("SIFT_QUICK"', 1)[1]  # used after being read
    assert not NETWORK.search(code), f"{name}: looks like it reaches the network"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_writes_only_to_temporary_directories(name):
    code = _code(_read(name))
    writes = re.findall(r"(?:out|path)\s*=\s*[\"'][^\"']+[\"']|\.to_netcdf\(|savefig\(|open\([^)]*[\"']w", code)
    assert not writes, f"{name}: writes outside a tempfile directory: {writes}"
    if re.search(r"sweep\.run\(|reproduce\(|plot_dataset\(|write_text\(", code):
        assert "tempfile.mkdtemp" in code


@pytest.mark.parametrize("name", WITH_CHECKS)
def test_notebook_ends_with_checks(name):
    """The last code cell checks the headline numbers with asserts (run by nbmake in `make test`)."""
    code = [c for c in _read(name).cells if c.cell_type == "code"]
    assert code[-1].source.count("assert ") >= 3, f"{name}: the last code cell holds no checks"


def test_make_test_executes_the_notebooks():
    """The notebooks run in CI: `.ci/run` calls `make test`, whose recipe runs nbmake over notebooks/ at
    quick sizes (this is why `test_notebook_executes_quick` is skipped by default)."""
    root = ROOT.parent
    assert "make test" in (root / ".ci" / "run").read_text()
    recipe = (root / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"SIFT_QUICK=1 \S*python -m pytest .*--nbmake notebooks", recipe), recipe


@pytest.mark.skipif(
    os.environ.get("SIFT_RUN_NOTEBOOKS", "0") in ("", "0"),
    reason="executed by nbmake in `make test` (Makefile, second step); SIFT_RUN_NOTEBOOKS=1 runs them here too",
)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_quick(name, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    monkeypatch.setenv("SIFT_QUICK", "1")
    nb = _read(name)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
