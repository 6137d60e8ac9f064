"""Registries of classes keyed by a proto enum value or a user type name.

Each class registers itself where it is defined:

    @layer_registry.register(job_pb2.kInnerProduct)
    class InnerProductLayer(Layer): ...

A lookup of an unknown key raises a `UserError` that lists the known ones.

Registration is checked when it happens, so a user's mistake shows where the
user made it (at import of their module), not in the middle of a job:

- a key registered twice (to another class) is an error;
- a class that lacks one of the registry's `required` methods is an error
  naming every missing method. A method that the class only inherits as a
  stub of its base (a body that just raises `NotImplementedError`, or one
  marked `abc.abstractmethod`) counts as missing: a `Layer` subclass without
  `compute_gradient` is refused although `Layer` defines one that raises.
  The other stubs of a base that provides required methods are required
  too (`Updater.rule`: `Updater` defines apply/update/state/load_state on
  top of it), so whatever such a base leaves abstract, the class registered
  must define. A registry without `required` methods checks nothing.
"""
from __future__ import annotations

import difflib
import dis
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from runtime.errors import UserError

T = TypeVar("T")


class Registry:
    """Maps enum values (ints) and user type names (strs) to classes.

    `what` names the kind of thing in messages ("layer type", "updater").
    `enum` is the proto enum wrapper used to print names of enum keys.
    `required` lists methods a registered class must define.
    `user_hint` says how a user's class gets registered; it ends the message
    for an unknown user_type.
    """

    def __init__(self, what: str, enum: EnumTypeWrapper | None = None,
                 required: tuple[str, ...] = (), user_hint: str = ""):
        self.what = what
        self.enum = enum
        self.required = required
        self.user_hint = user_hint
        self._classes: dict[int | str, Any] = {}

    def key_name(self, key: int | str) -> str:
        if isinstance(key, int) and self.enum is not None:
            try:
                return self.enum.Name(key)
            except ValueError:
                return str(key)
        return str(key)

    def register(self, *keys: int | str) -> Callable[[T], T]:
        """Decorator: register the class under every key given.

        `@registry.register` without a key (or with a class as the key) is a
        UserError at once, rather than silently replacing the class.
        """
        if not keys or any(not isinstance(k, (int, str)) or isinstance(k, bool) or k == ""
                           for k in keys):
            given = ", ".join(_name(k) for k in keys) or "nothing"
            raise UserError(f"{self.what}: register() takes the names to register under, e.g. "
                            f"@register(\"MyName\"); got {given}")

        def add(cls: T) -> T:
            for key in keys:
                self.add(key, cls)
            return cls

        return add

    def add(self, key: int | str, cls: Any) -> None:
        """Register `cls` under `key`; a UserError if the key is taken by
        another class or `cls` lacks a required method (see the module doc)."""
        if not isinstance(key, (int, str)) or isinstance(key, bool) or key == "":
            raise UserError(f"cannot register {_name(cls)!r} as {self.what} {key!r}: the key "
                            "must be a non-empty name string (or a built-in enum value)")
        if key in self._classes and self._classes[key] is not cls:
            old = self._classes[key]
            raise UserError(
                f"{self.what} {self.key_name(key)!r} is already registered "
                f"to {_name(old)} (from {getattr(old, '__module__', '?')}); cannot register "
                f"{_name(cls)} (from {getattr(cls, '__module__', '?')}) under the same name")
        missing = missing_methods(cls, self.required)
        if missing:
            raise UserError(
                f"cannot register {_name(cls)!r} as "
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
        """The class for a proto's (type, user_type) pair: user_type wins when set.

        An unregistered user_type raises a UserError worded by `unknown_user_type`."""
        if user_type:
            if user_type not in self._classes:
                raise UserError(self.unknown_user_type(user_type))
            return self._classes[user_type]
        return self.get(enum_value)

    def unknown_user_type(self, name: str) -> str:
        """Why nothing is registered under user_type `name`, in one line: the
        nearest registered names (a built-in one is written `type: kX`, a
        user one `user_type: "X"`), the registered user and built-in names
        (never `name` itself: a built-in enum name such as SINGA's C++
        `kEmbedding` is not a user_type), and `user_hint`."""
        users = sorted(k for k in self._classes if isinstance(k, str) and k != name)
        builtins = sorted({self.key_name(k) for k in self._classes if isinstance(k, int)} - {name})
        msg = f"unknown {self.what} {name!r} (user_type): nothing is registered under that name"
        if self.enum is not None and name in self.enum.keys():
            msg += f" ({name} is the name of a built-in type, selected by type: {name})"
        near = nearest(name, users + builtins)
        if near:
            msg += "; did you mean " + " or ".join(
                f'user_type: "{n}"' if n in users else f"type: {n}" for n in near) + "?"
        msg += f"; registered user types: {', '.join(users) or 'none'}"
        if builtins:
            msg += "; built-in types: " + ", ".join(builtins)
        return msg + (f"; {self.user_hint}" if self.user_hint else "")


# ------------------------------------------------------------ method checks --
# Instructions that carry no behaviour of their own around a `raise`.
_NOISE = {"RESUME", "NOP", "CACHE", "PUSH_NULL", "EXTENDED_ARG", "PRECALL", "CALL",
          "CALL_FUNCTION", "KW_NAMES", "LOAD_CONST", "LOAD_FAST", "FORMAT_VALUE",
          "BUILD_STRING", "COPY_FREE_VARS", "MAKE_CELL"}


def nearest(word: str, choices: list[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """Up to `n` of `choices` closest to `word` (difflib ratio >= `cutoff`),
    best first, ignoring case (SINGA's "kData" is near a user's "RNNLMData")."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    return [by_lower[c] for c in difflib.get_close_matches(word.lower(), list(by_lower), n=n,
                                                           cutoff=cutoff)]


def did_you_mean(word: str, choices: list[str], quote: str = "'") -> str:
    """"; did you mean 'a' or 'b'?" for the `nearest` choices, or "" when none
    is near; `quote` goes around each choice ("" for enum names). A conf's
    misspelt field, enum value or name: the stricter cutoff 0.6 keeps the
    hint to close spellings."""
    close = nearest(word, list(choices), cutoff=0.6)
    return ("; did you mean " + " or ".join(f"{quote}{c}{quote}" for c in close) + "?"
            if close else "")


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or repr(obj)


def is_stub(fn: Any) -> bool:
    """Whether `fn` is an abstract placeholder: marked `abc.abstractmethod`,
    or a body that only raises NotImplementedError (with or without a message)."""
    if getattr(fn, "__isabstractmethod__", False):
        return True
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return code is not None and _raises_only(code)


# Every registration checks the methods each class inherits, so a base's few
# stubs are disassembled once per subclass (900 times, a tenth of a second at
# each start of the CLI, a master or a process); a code object's answer never
# changes.
@functools.cache
def _raises_only(code: Any) -> bool:
    """Whether `code`'s body only raises NotImplementedError (see `is_stub`)."""
    if "NotImplementedError" not in code.co_names:  # most methods: no need to disassemble
        return False
    ops = [i for i in dis.get_instructions(code) if i.opname not in _NOISE]
    if len(ops) < 2 or ops[-1].opname != "RAISE_VARARGS":
        return False
    if ops[0].opname not in ("LOAD_GLOBAL", "LOAD_NAME") or ops[0].argval != "NotImplementedError":
        return False
    # between the two only the message may be built: no branch, return or store
    return not any(i.opname.startswith(("RETURN", "JUMP", "POP_JUMP", "STORE", "RAISE"))
                   for i in ops[1:-1])


def missing_methods(cls: Any, required: tuple[str, ...] = ()) -> list[str]:
    """The methods `cls` must define but does not, in order: the `required`
    ones that are absent, not callable, or only inherited as a base's stub,
    then the other stubs it inherits from a base that provides some of the
    `required` methods (see `is_stub`).

    A stub the class defines itself is taken as deliberate and not reported.
    For a function (not a class), or with no `required`, only `required` is
    checked.
    """
    missing = [m for m in required if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or not required:
        return missing
    for name, owner in _inherited_stubs(cls):
        contract = name in required or any(m in vars(owner) for m in required)
        if name not in missing and contract and not name.startswith("__"):
            missing.append(name)
    order = {m: k for k, m in enumerate(required)}
    return sorted(missing, key=lambda m: order.get(m, len(order)))


def _inherited_stubs(cls: type) -> list[tuple[str, type]]:
    """(name, defining base) of each method `cls` resolves to a stub of a base."""
    out = []
    seen: set[str] = set()
    for klass in cls.__mro__:
        for name, attr in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            if klass is not cls and klass is not object and inspect.isfunction(
                    getattr(attr, "__func__", attr)) and is_stub(attr):
                out.append((name, klass))
    return out
