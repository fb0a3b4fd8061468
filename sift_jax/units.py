"""dB/dBm conversions, used only at the edges (presets, CLI)."""

import math


def dbm_to_w(dbm: float) -> float:
    """Power in dBm -> W.

    >>> round(dbm_to_w(30.0), 9)
    1.0
    """
    return 10.0 ** (dbm / 10.0) / 1e3


def w_to_dbm(w: float) -> float:
    """Power in W -> dBm (``-inf`` for 0).

    >>> w_to_dbm(1.0)
    30.0
    """
    return 10.0 * math.log10(w * 1e3) if w > 0 else -math.inf


def db_to_linear(db: float) -> float:
    """Ratio in dB -> linear.

    >>> db_to_linear(10.0)
    10.0
    """
    return 10.0 ** (db / 10.0)
