"""The one exception users see for bad input."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Bad input: names the field, the value given and what is allowed.

    A `ValueError` subclass, so ``except ValueError`` also catches it. The message reads
    ``"<field> = <value!r> is invalid: allowed is <allowed>"`` unless `message` replaces it.

    Args:
        field: name of the offending Scenario field, option or argument (kept as `.field`).
        value: the value given (kept as `.value`).
        allowed: human-readable description of the allowed values (kept as `.allowed`).
        message: keyword-only; a full message that replaces the generated one.

    Example:
        >>> raise ConfigError("bandwidth_hz", -1.0, "a finite number > 0")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: bandwidth_hz = -1.0 is invalid: allowed is a finite number > 0
        >>> err = ConfigError("eta", "x", "a number >= 0")
        >>> isinstance(err, ValueError), err.field, err.value
        (True, 'eta', 'x')
    """

    def __init__(self, field: str, value=None, allowed: str = "", *, message: str | None = None):
        self.field = field
        self.value = value
        self.allowed = allowed
        text = message or f"{field} = {value!r} is invalid: allowed is {allowed}"
        super().__init__(text)
