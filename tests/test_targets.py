"""The paper targets file (sweeps/paper_targets.toml): it loads, matches the specs, and bad files are refused."""

import pathlib

import pytest

from sift_jax import sweep, targets
from sift_jax.errors import ConfigError
from sift_jax.reproduce import default_spec_dir

PANELS = ("fig3b", "fig4b", "fig5a", "fig5b", "fig6a", "fig6b", "fig7a", "fig7b", "fig8a", "fig8b")
# SIFTMOE.md 5.1: the paper defaults per model
DEFAULTS = {
    "switch-base-8": {"bandwidth_hz": 1e6, "deadline_s": 0.7, "eta": 200.0},
    "mixtral-8x7b": {"bandwidth_hz": 2e6, "deadline_s": 0.074, "eta": 1.5},
}


def test_every_paper_panel_has_targets_that_match_its_spec():
    loaded = targets.load()
    assert tuple(sorted(loaded)) == PANELS
    for name, panel in loaded.items():
        spec = sweep.load_spec(default_spec_dir() / f"{name}.toml")
        labels = [c.label for c in spec.curves]
        # the paper's model: the spec's preset, or a variant of it (e.g. "switch-base-8-4090")
        assert panel.name == name and (spec.preset == panel.model or spec.preset.startswith(panel.model + "-")), name
        assert next(field for field, _ in spec.axes) == panel.field, name
        assert set(panel.curves) <= set(labels), (name, panel.curves, labels)
        assert panel.default_x == DEFAULTS[panel.model][panel.field], name
        values = dict(spec.axes)[panel.field]
        assert any(abs(v - panel.default_x) <= 1e-9 * panel.default_x for v in values), name  # on the axis
        assert panel.x_range[0] <= min(values) and max(values) <= panel.x_range[1] * (1 + 1e-12), name
        for field, value in spec.fixed.items():  # the spec's fixed fields are the paper defaults
            if field in DEFAULTS[panel.model]:
                assert value == DEFAULTS[panel.model][field], (name, field)
        assert panel.figure.startswith("Fig. ") and panel.source and all(c.source and c.text for c in panel.claims)


def test_claims_per_panel_follow_the_paper():
    loaded = targets.load()
    kinds = {name: [(c.kind, c.curves) for c in panel.claims] for name, panel in loaded.items()}
    for name in ("fig3b", "fig4b"):  # eta: SiftMoE falls, below Top-K for eta > 0
        assert kinds[name] == [("falls", ("siftmoe",)), ("below", ("siftmoe", "topk"))]
        assert loaded[name].claims[1].exclude_x == (0.0,) and loaded[name].claims[1].max_ratio == 0.9
    for name in ("fig5a", "fig6a"):
        assert kinds[name] == [
            ("falls", ("siftmoe",)),
            ("falls", ("topk",)),
            ("below", ("siftmoe", "topk")),
            ("gap_largest_at_tightest", ("siftmoe", "topk")),
        ]
    for name in ("fig5b", "fig6b"):
        assert kinds[name] == [("falls", ("siftmoe",)), ("falls", ("topk",)), ("below", ("siftmoe", "topk"))]
    fast = [
        ("falls", ("siftmoe:dynamic",)),
        ("falls", ("topk:dynamic",)),
        ("below", ("siftmoe:dynamic", "siftmoe:uniform")),
        ("below", ("topk:dynamic", "topk:uniform")),
        ("below", ("siftmoe:dynamic", "topk:dynamic")),
        ("below", ("siftmoe:dynamic", "topk:uniform")),
        ("below", ("siftmoe:dp", "siftmoe:dynamic")),
    ]
    assert kinds["fig7a"] == fast + [("gap_largest_at_tightest", ("siftmoe:dynamic", "topk:dynamic"))]
    for name in ("fig7b", "fig8a", "fig8b"):
        assert kinds[name] == fast
    for panel in loaded.values():
        for c in panel.claims:
            if c.kind == "falls":
                assert c.min_fall == 0.30
            elif c.kind == "below":
                expected = (
                    1.0 if c.curve.endswith(":dp") else 0.95 if c.curve.split(":")[0] == c.other.split(":")[0] else 0.9
                )
                assert c.max_ratio == expected, (panel.name, c)
                assert c.source.startswith("engine") == c.curve.endswith(":dp")
    assert targets.load()["fig6a"].y_range == (0.0, 6.0) and targets.load()["fig3b"].y_range == (0.02, 0.04)


def test_get_returns_none_without_targets():
    assert targets.get("gptoss_eta") is None and targets.get("my_spec") is None
    assert targets.get("fig8b").default_x == 0.074


GOOD = """
[figA]
figure = "Fig. A"
model = "switch-base-8"
field = "bandwidth_hz"
x_range = [0.9e6, 1.2e6]
y_range = [0.03, 0.11]
default_x = 1e6
source = "test"

[[figA.claims]]
kind = "below"
curve = "siftmoe"
other = "topk"
max_ratio = 0.9
"""


def _write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "paper_targets.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "old, new, field",
    [
        ('kind = "below"', 'kind = "rises"', "paper_targets.figA.claims[0].kind"),
        ("y_range = [0.03, 0.11]", "y_range = [0.11, 0.03]", "paper_targets.figA.y_range"),
        ("y_range = [0.03, 0.11]", "y_range = [-0.1, 0.11]", "paper_targets.figA.y_range"),
        ("y_range = [0.03, 0.11]", "y_range = [0.03]", "paper_targets.figA.y_range"),
        ("x_range = [0.9e6, 1.2e6]", 'x_range = [0.9e6, "1.2 MHz"]', "paper_targets.figA.x_range"),
        ("default_x = 1e6", "default_x = 2e6", "paper_targets.figA.default_x"),
        ('field = "bandwidth_hz"', 'field = "bandwidth_mhz"', "paper_targets.figA.field"),
        ('figure = "Fig. A"', 'figure = ""', "paper_targets.figA.figure"),
        ("max_ratio = 0.9", "max_ratio = 0.0", "paper_targets.figA.claims[0].max_ratio"),
        ("max_ratio = 0.9", "min_fall = 1.5", "paper_targets.figA.claims[0].min_fall"),
        ("max_ratio = 0.9", "exclude_x = 0.0", "paper_targets.figA.claims[0].exclude_x"),
        ('other = "topk"\n', "", "paper_targets.figA.claims[0].other"),
        ('other = "topk"', 'other = "siftmoe"', "paper_targets.figA.claims[0].other"),
        ('kind = "below"', 'kind = "falls"', "paper_targets.figA.claims[0].other"),
        ("max_ratio = 0.9", "max_ration = 0.9", "paper_targets.figA.claims[0].max_ration"),
        ('source = "test"', 'sources = "test"', "paper_targets.figA.sources"),
    ],
)
def test_bad_target_files_name_the_field(tmp_path, old, new, field):
    assert old in GOOD
    assert targets.load(_write(tmp_path, GOOD))["figA"].claims[0].max_ratio == 0.9
    with pytest.raises(ConfigError) as err:
        targets.load(_write(tmp_path, GOOD.replace(old, new)))
    assert err.value.field == field


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError) as err:
        targets.load(tmp_path / "nope.toml")
    assert err.value.field == "targets"
    with pytest.raises(ConfigError) as err:
        targets.load(_write(tmp_path, "[figA\n"))
    assert err.value.field == "paper_targets"
    with pytest.raises(ConfigError) as err:
        targets.load(_write(tmp_path, "figA = 3\n"))
    assert err.value.field == "paper_targets.figA"
