"""The paper's figures as data (`sweeps/paper_targets.toml`): plotted ranges, defaults and claims per panel.

Each panel (keyed by its spec name, e.g. "fig5a") records the paper's label, the model preset, the swept
Scenario field, the x and y tick ranges of the paper's plot (SI units: Hz, s, J; tick labels, not data
points), the paper default of the swept field and the claims the paper makes about the panel, each
with the paper's words and where they come from. `sift_jax.report` judges the claims on sweep data;
`sift_jax.plots` draws the plotted y-range as a band.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import tomllib

from sift_jax.errors import ConfigError

__all__ = ["ClaimTarget", "PanelTarget", "default_path", "get", "load", "parse"]

KINDS = ("falls", "below", "gap_largest_at_tightest")
FIELDS = ("eta", "bandwidth_hz", "deadline_s")
PANEL_KEYS = ("figure", "model", "field", "x_range", "y_range", "default_x", "source", "claims")
CLAIM_KEYS = ("kind", "curve", "other", "min_fall", "max_ratio", "exclude_x", "text", "source")


@dataclasses.dataclass(frozen=True)
class ClaimTarget:
    """One claim of the paper about one panel.

    Attributes:
        kind: "falls" (`curve` falls along the swept field), "below" (`curve` below `other`) or
            "gap_largest_at_tightest" (the saving `other` - `curve` is largest at the smallest x).
        curve: a curve label of the spec (e.g. "siftmoe", "siftmoe:dynamic").
        other: the second curve of "below" and "gap_largest_at_tightest" (None for "falls").
        min_fall: "falls": the minimum relative fall from the first to the last point (fraction).
        max_ratio: "below": the largest allowed mean ratio curve/other at every judged point.
        exclude_x: "below": x values (the field's SI unit) that are not judged.
        text: the paper's words, short. source: the paper section / figure it comes from.

    Example:
        >>> ClaimTarget("below", "siftmoe", "topk", max_ratio=0.9, exclude_x=(0.0,)).curves
        ('siftmoe', 'topk')
    """

    kind: str
    curve: str
    other: str | None = None
    min_fall: float = 0.30
    max_ratio: float = 1.0
    exclude_x: tuple[float, ...] = ()
    text: str = ""
    source: str = ""

    @property
    def curves(self) -> tuple[str, ...]:
        """The curve labels the claim needs (curve, then other if any)."""
        return (self.curve,) if self.other is None else (self.curve, self.other)


@dataclasses.dataclass(frozen=True)
class PanelTarget:
    """One panel of the paper: what it plots and what the paper says about it.

    Attributes:
        name: the spec name (e.g. "fig5a"). figure: the paper's label (e.g. "Fig. 5(a)").
        model: the preset name ("switch-base-8", "mixtral-8x7b").
        field: the swept Scenario field ("eta", "bandwidth_hz" or "deadline_s").
        x_range: (lo, hi) of the paper's x axis, in the field's SI unit (Hz, s; eta dimensionless).
        y_range: (lo, hi) J, the paper's plotted energy-per-token tick range.
        default_x: the paper default of `field` (SI unit).
        claims: the paper's claims (`ClaimTarget`s). source: where the ranges and default come from.

    Example:
        >>> fig = load()["fig5a"]
        >>> fig.figure, fig.field, fig.x_range, fig.y_range, fig.default_x
        ('Fig. 5(a)', 'bandwidth_hz', (900000.0, 1200000.0), (0.03, 0.11), 1000000.0)
        >>> fig.curves
        ('siftmoe', 'topk')
    """

    name: str
    figure: str
    model: str
    field: str
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    default_x: float
    claims: tuple[ClaimTarget, ...] = ()
    source: str = ""

    @property
    def curves(self) -> tuple[str, ...]:
        """Every curve label the claims need, in order of first use."""
        return tuple(dict.fromkeys(c for claim in self.claims for c in claim.curves))


def default_path() -> pathlib.Path:
    """The repository's `sweeps/paper_targets.toml` (next to the package, like `reproduce.default_spec_dir`).

    Returns:
        Its path (it exists in a source checkout, not necessarily in an installed wheel).

    Example:
        >>> default_path().name, default_path().exists()
        ('paper_targets.toml', True)
    """
    return pathlib.Path(__file__).resolve().parent.parent / "sweeps" / "paper_targets.toml"


def _number(value, field: str, allowed: str = "a finite number") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, value, allowed)
    return float(value)


def _text(value, field: str, required: bool = True) -> str:
    if not isinstance(value, str) or (required and not value.strip()):
        raise ConfigError(field, value, "a non-empty string" if required else "a string")
    return value


def _range(value, field: str, min_lo: float | None = None) -> tuple[float, float]:
    allowed = "[lo, hi] with finite numbers lo < hi" + (f" and lo >= {min_lo:g}" if min_lo is not None else "")
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(field, value, allowed)
    lo, hi = (_number(v, field, allowed) for v in value)
    if not lo < hi or (min_lo is not None and lo < min_lo):
        raise ConfigError(field, value, allowed)
    return lo, hi


def _unknown(raw: dict, keys: tuple[str, ...], where: str) -> None:
    extra = sorted(set(raw) - set(keys))
    if extra:
        raise ConfigError(f"{where}.{extra[0]}", raw[extra[0]], "one of the keys " + ", ".join(keys))


def _claim(raw, where: str) -> ClaimTarget:
    if not isinstance(raw, dict):
        raise ConfigError(where, raw, "a table of claim keys")
    _unknown(raw, CLAIM_KEYS, where)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind", kind, "one of " + ", ".join(KINDS))
    curve = _text(raw.get("curve"), f"{where}.curve")
    other = raw.get("other")
    if kind == "falls":
        if other is not None:
            raise ConfigError(f"{where}.other", other, "no `other` for kind 'falls'")
    else:
        other = _text(other, f"{where}.other")
        if other == curve:
            raise ConfigError(f"{where}.other", other, f"a curve other than {curve!r}")
    min_fall = _number(raw.get("min_fall", 0.30), f"{where}.min_fall", "a number in [0, 1)")
    if not 0.0 <= min_fall < 1.0:
        raise ConfigError(f"{where}.min_fall", min_fall, "a number in [0, 1)")
    max_ratio = _number(raw.get("max_ratio", 1.0), f"{where}.max_ratio", "a finite number > 0")
    if max_ratio <= 0.0:
        raise ConfigError(f"{where}.max_ratio", max_ratio, "a finite number > 0")
    exclude = raw.get("exclude_x", [])
    if not isinstance(exclude, list):
        raise ConfigError(f"{where}.exclude_x", exclude, "a list of finite numbers")
    exclude_x = tuple(_number(v, f"{where}.exclude_x", "a list of finite numbers") for v in exclude)
    return ClaimTarget(
        kind,
        curve,
        other,
        min_fall,
        max_ratio,
        exclude_x,
        _text(raw.get("text", ""), f"{where}.text", False),
        _text(raw.get("source", ""), f"{where}.source", False),
    )


def _panel(name: str, raw, where: str) -> PanelTarget:
    if not isinstance(raw, dict):
        raise ConfigError(where, raw, "a table of panel keys")
    _unknown(raw, PANEL_KEYS, where)
    field = raw.get("field")
    if field not in FIELDS:
        raise ConfigError(f"{where}.field", field, "one of " + ", ".join(FIELDS))
    x_range = _range(raw.get("x_range"), f"{where}.x_range")
    y_range = _range(raw.get("y_range"), f"{where}.y_range", min_lo=0.0)
    default_x = _number(raw.get("default_x"), f"{where}.default_x", f"a number in x_range {list(x_range)}")
    if not x_range[0] <= default_x <= x_range[1]:
        raise ConfigError(f"{where}.default_x", default_x, f"a number in x_range {list(x_range)}")
    claims = raw.get("claims", [])
    if not isinstance(claims, list):
        raise ConfigError(f"{where}.claims", claims, "an array of tables [[<panel>.claims]]")
    return PanelTarget(
        name,
        _text(raw.get("figure"), f"{where}.figure"),
        _text(raw.get("model"), f"{where}.model"),
        field,
        x_range,
        y_range,
        default_x,
        tuple(_claim(c, f"{where}.claims[{i}]") for i, c in enumerate(claims)),
        _text(raw.get("source", ""), f"{where}.source", False),
    )


def parse(raw: dict, prefix: str = "paper_targets") -> dict[str, PanelTarget]:
    """Validate a parsed targets table (panel name -> panel table) into `PanelTarget`s.

    Args:
        raw: the TOML document as a dict (`tomllib.loads`).
        prefix: the name errors start with (the file stem).

    Returns:
        Panel name -> `PanelTarget`, in file order.

    Raises:
        ConfigError: a bad key or value, naming it as `<prefix>.<panel>.<key>` (e.g.
            `paper_targets.fig5a.y_range`, `paper_targets.fig5a.claims[1].kind`).

    Example:
        >>> raw = {"demo": {"figure": "Fig. 1", "model": "switch-base-8", "field": "eta", "x_range": [0, 300],
        ...                 "y_range": [0.04, 0.02], "default_x": 200}}
        >>> parse(raw)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: paper_targets.demo.y_range = [0.04, 0.02] is invalid: allowed is [lo, hi] with ...
        >>> raw["demo"]["y_range"] = [0.02, 0.04]
        >>> parse(raw)["demo"].y_range
        (0.02, 0.04)
    """
    return {name: _panel(name, panel, f"{prefix}.{name}") for name, panel in raw.items()}


def load(path=None) -> dict[str, PanelTarget]:
    """Read and validate a targets file.

    Args:
        path: a TOML file (default `default_path()`, the repository's `sweeps/paper_targets.toml`).

    Returns:
        Panel (spec) name -> `PanelTarget`.

    Raises:
        ConfigError: the file is missing, is not TOML, or holds a bad value (named, see `parse`).

    Example:
        >>> targets = load()
        >>> sorted(targets)[:3], [c.kind for c in targets["fig5a"].claims]
        (['fig3b', 'fig4b', 'fig5a'], ['falls', 'falls', 'below', 'gap_largest_at_tightest'])
    """
    path = pathlib.Path(path) if path is not None else default_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("targets", str(path), "an existing TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path.stem, str(path), f"valid TOML ({err})") from None
    return parse(raw, path.stem)


def get(name: str, path=None) -> PanelTarget | None:
    """The targets of one panel, or None for specs the paper has no figure for (e.g. gptoss_*, user specs).

    Args:
        name: a spec name (e.g. "fig5a").
        path: the targets file (default `default_path()`); a missing default file gives None.

    Returns:
        The `PanelTarget` or None.

    Example:
        >>> get("fig7a").figure, get("gptoss_eta") is None
        ('Fig. 7(a)', True)
    """
    if path is None and not default_path().exists():
        return None
    return load(path).get(name)
