"""The one exception users see for bad input."""


class ConfigError(ValueError):
    """Bad input: names the field, the value given and what is allowed.

    Example:
        >>> raise ConfigError("bandwidth_hz", -1.0, "a finite number > 0")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: bandwidth_hz = -1.0 is invalid: allowed is a finite number > 0
    """

    def __init__(self, field: str, value=None, allowed: str = "", *, message: str | None = None):
        self.field = field
        self.value = value
        self.allowed = allowed
        text = message or f"{field} = {value!r} is invalid: allowed is {allowed}"
        super().__init__(text)
