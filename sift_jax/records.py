"""The registry every extension point shares (policies, fading families, metrics): an ordered name -> record
map that refuses duplicates and unknown names with a `ConfigError` naming the field."""

from __future__ import annotations

from typing import Generic, TypeVar

from sift_jax.errors import ConfigError

__all__ = ["Registry"]

R = TypeVar("R")


class Registry(Generic[R]):
    """An ordered map of records by name.

    Args:
        field: the name errors give the value (e.g. "policy", "fading", "metric").

    Example:
        >>> reg = Registry("colour")
        >>> reg.add("red", 1)
        1
        >>> reg.names(), reg.get("red")
        (('red',), 1)
        >>> reg.add("red", 2)
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: colour = 'red' is invalid: allowed is a name not yet registered (pass
        replace=True to replace it)
        >>> reg.remove("red"); reg.get("red")
        Traceback (most recent call last):
        ...
        sift_jax.errors.ConfigError: colour = 'red' is invalid: allowed is one of
    """

    def __init__(self, field: str):
        self.field = field
        self._records: dict[str, R] = {}

    def add(self, name: str, record: R, replace: bool = False) -> R:
        """Add `record` under `name` (refused if taken, unless `replace`); returns it."""
        if name in self._records and not replace:
            raise ConfigError(self.field, name, "a name not yet registered (pass replace=True to replace it)")
        self._records[name] = record
        return record

    def remove(self, name: str) -> None:
        """Remove `name` (refused if not registered)."""
        if name not in self._records:
            raise ConfigError(self.field, name, "a registered name (one of " + ", ".join(self._records) + ")")
        del self._records[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._records)

    def get(self, name: str) -> R:
        """The record of `name` (refused if not registered)."""
        if not isinstance(name, str) or name not in self._records:
            raise ConfigError(self.field, name, "one of " + ", ".join(self._records))
        return self._records[name]

    def items(self):
        """(name, record) pairs, in registration order."""
        return self._records.items()
