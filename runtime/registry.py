"""Registries of classes keyed by a proto enum value or a user type name.

Each class registers itself where it is defined:

    @layer_registry.register(job_pb2.kInnerProduct)
    class InnerProductLayer(Layer): ...

A lookup of an unknown key raises a `UserError` that lists the known ones.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from runtime.errors import UserError

T = TypeVar("T")


class Registry:
    """Maps enum values (ints) and user type names (strs) to classes.

    `what` names the kind of thing in messages ("layer type", "updater").
    `enum` is the proto enum wrapper used to print names of enum keys.
    `required` lists methods a registered class must define.
    """

    def __init__(self, what: str, enum: EnumTypeWrapper | None = None,
                 required: tuple[str, ...] = ()):
        self.what = what
        self.enum = enum
        self.required = required
        self._classes: dict[int | str, Any] = {}

    def key_name(self, key: int | str) -> str:
        if isinstance(key, int) and self.enum is not None:
            try:
                return self.enum.Name(key)
            except ValueError:
                return str(key)
        return str(key)

    def register(self, *keys: int | str) -> Callable[[T], T]:
        """Decorator: register the class under every key given."""

        def add(cls: T) -> T:
            for key in keys:
                self.add(key, cls)
            return cls

        return add

    def add(self, key: int | str, cls: Any) -> None:
        if key in self._classes and self._classes[key] is not cls:
            raise UserError(
                f"{self.what} {self.key_name(key)!r} is already registered "
                f"to {self._classes[key].__qualname__}")
        missing = [m for m in self.required if not callable(getattr(cls, m, None))]
        if missing:
            raise UserError(
                f"cannot register {getattr(cls, '__qualname__', cls)!r} as "
                f"{self.what} {self.key_name(key)!r}: it lacks the method(s) "
                + ", ".join(missing))
        self._classes[key] = cls

    def __contains__(self, key: int | str) -> bool:
        return key in self._classes

    def known(self) -> list[str]:
        return sorted(self.key_name(k) for k in self._classes)

    def get(self, key: int | str) -> Any:
        try:
            return self._classes[key]
        except KeyError:
            raise UserError(
                f"unknown {self.what} {self.key_name(key)!r}; known: "
                + ", ".join(self.known())) from None

    def lookup(self, enum_value: int, user_type: str = "") -> Any:
        """The class for a proto's (type, user_type) pair: user_type wins when set."""
        return self.get(user_type if user_type else enum_value)
