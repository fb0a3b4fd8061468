"""dB/dBm conversions, used only at the edges (presets, CLI).

Scenario fields are linear SI values (W, W/Hz); the paper quotes dBm and dB. Convert with these.
"""

import math

__all__ = ["db_to_linear", "dbm_to_w", "w_to_dbm"]


def dbm_to_w(dbm: float) -> float:
    """Power in dBm -> W: P_W = 10^(dBm / 10) / 1000.

    Args:
        dbm: power (or power spectral density per Hz) in dBm.

    Returns:
        float, the same quantity in W (W/Hz for a PSD).

    Example:
        >>> round(dbm_to_w(30.0), 9)         # 30 dBm = 1 W
        1.0
        >>> import math
        >>> math.isclose(dbm_to_w(-174.0), 10 ** -20.4)   # thermal noise PSD, W/Hz
        True
    """
    return 10.0 ** (dbm / 10.0) / 1e3


def w_to_dbm(w: float) -> float:
    """Power in W -> dBm (``-inf`` for 0), the inverse of `dbm_to_w`.

    Args:
        w: power in W, >= 0.

    Returns:
        float, power in dBm; ``-inf`` for w = 0.

    Example:
        >>> w_to_dbm(1.0)
        30.0
        >>> w_to_dbm(0.0)
        -inf
        >>> round(w_to_dbm(dbm_to_w(38.0)), 9)   # round trip
        38.0
    """
    return 10.0 * math.log10(w * 1e3) if w > 0 else -math.inf


def db_to_linear(db: float) -> float:
    """Ratio in dB -> linear: 10^(dB / 10).

    Args:
        db: a power ratio (gain, K-factor, ...) in dB.

    Returns:
        float, the linear ratio (dimensionless).

    Example:
        >>> db_to_linear(10.0)
        10.0
        >>> db_to_linear(0.0)
        1.0
    """
    return 10.0 ** (db / 10.0)
