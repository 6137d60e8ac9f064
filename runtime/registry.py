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

    def create(self, proto: Any, *, block: str, noun: str, default_type: int,
               decorator: str, builtins: list[str], example: str) -> Any:
        """Instantiate the class that a config block's (type, user_type) names.

        `proto` has `type` and `user_type`; `block` is how the job.conf spells
        the block ("updater", "learning_rate"), `noun` what it configures.
        An unregistered user_type, or `type` left at the enum's user default
        (`default_type`) with no user_type, raises a UserError that lists the
        registered user classes and the built-in choices.
        """
        if proto.user_type:
            if proto.user_type not in self:
                users = [k for k in self.known() if k not in builtins]
                raise UserError(
                    f"{block} {{ user_type: {proto.user_type!r} }}: no {noun} is registered "
                    f"under that name; registered user {noun}s: {', '.join(users) or 'none'}; "
                    f"built-in types: {', '.join(builtins)}")
            return self.get(proto.user_type)(proto)
        if proto.type == default_type:
            article = "an" if noun[0] in "aeiou" else "a"
            raise UserError(
                f"{block} {{ type }} is {self.key_name(default_type)} (the default), which "
                f"needs user_type to name {article} {noun} registered with @{decorator}; set type to "
                f"one of {', '.join(builtins)} (e.g. {example})")
        return self.get(proto.type)(proto)

    def lookup(self, enum_value: int, user_type: str = "") -> Any:
        """The class for a proto's (type, user_type) pair: user_type wins when set."""
        return self.get(user_type if user_type else enum_value)
