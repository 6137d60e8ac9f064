"""Field-path overrides of a job.conf, for `singa sweep` (job arrays).

    --set updater.learning_rate.base_lr=0.1,0.01,0.001
    --set 'neuralnet.layer[fc1].innerproduct_conf.num_output=256,512'

`parse_set` reads one `--set`, `apply` sets one field of a `JobProto`,
`check` tries every value of every setting before anything is queued,
`grid` / `sample` enumerate the points of a sweep and `label` names a point
for tables; `render` writes the job.conf of one point.

Path grammar: dotted field names of conf/job.proto. An element of a repeated
field is selected with `[NAME]` (the elements whose `name` field is NAME:
layers, params) or `[INDEX]` (0-based). `[NAME]` selects every element of
that name: SINGA gives the train and test variants of one layer the same
name (the two `data` layers of examples/mnist), and a value that must agree
between them (std_value, shape) can only be swept by setting both at once;
`[INDEX]` selects one. Unset optional sub-messages on the way are created.
Extension fields (`[ext] { }` blocks of a user's .proto) cannot be set.
"""
from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from conf import job_pb2
from runtime.config.locate import Locator
from runtime.config.parse import _DOC_NAMES, _REMOVED, parse_text, unknown_extensions
from runtime.errors import ConfigError, Problem, UserError
from runtime.registry import did_you_mean

__all__ = ["Setting", "parse_set", "apply", "apply_all", "check", "grid", "sample", "label",
           "short_names", "render", "note_overrides"]

_EXAMPLE = "e.g. updater.learning_rate.base_lr=0.1,0.01"
_PART = re.compile(r"([A-Za-z_]\w*)(?:\[([^\[\]]*)\])?")
_FEW = 10          # up to this many names are listed in full
_FLOAT_MAX = 3.4028234663852886e38
_INT_RANGE = {
    FieldDescriptor.CPPTYPE_INT32: ("int32", -2**31, 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: ("int64", -2**63, 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: ("uint64", 0, 2**64 - 1),
}
_MESSAGE = FieldDescriptor.CPPTYPE_MESSAGE
_TYPE_NAMES = {
    FieldDescriptor.CPPTYPE_FLOAT: "float", FieldDescriptor.CPPTYPE_DOUBLE: "double",
    FieldDescriptor.CPPTYPE_BOOL: "bool", FieldDescriptor.CPPTYPE_STRING: "string",
    FieldDescriptor.CPPTYPE_ENUM: "enum",
}


# ------------------------------------------------------------------ --set ---
@dataclass(frozen=True)
class Setting:
    """One `--set PATH=V1,V2,...`: the field path, its values (as written,
    distinct, in order) and where the user wrote it ("--set #2")."""

    path: str
    values: tuple[str, ...]
    where: str


def parse_set(spec: str, where: str) -> Setting:
    """Read `PATH=V1,V2,...` (spaces around the path and each value ignored).

    A missing `=`, an empty path or value, a malformed path (see `parse_path`)
    or a value given twice is a UserError that starts with `where` and the spec.
    The path is not looked up in a job here (see `check`).
    """
    head = f"{where} {spec!r}"
    path, eq, rest = spec.partition("=")
    path = path.strip()
    values = tuple(v.strip() for v in rest.split(","))
    if not eq or not path or not any(values):
        raise UserError(f"{head}: expected PATH=VALUE[,VALUE...], {_EXAMPLE}")
    if "" in values:
        raise UserError(f"{head}: empty value (value {values.index('') + 1} of {len(values)}); "
                        f"expected PATH=VALUE[,VALUE...], {_EXAMPLE}")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise UserError(f"{head}: value(s) given twice: {', '.join(twice)}; each point of a "
                        "sweep must differ")
    try:
        parse_path(path)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return Setting(path, values, where)


def parse_path(path: str) -> list[tuple[str, str | None]]:
    """`a.b[x].c` -> [("a", None), ("b", "x"), ("c", None)]; a UserError
    naming the path and the bad part when it does not follow the grammar."""
    parts: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        m = _PART.match(path, pos)
        if m is None or m.end() == pos:
            bad = path[pos:] or "(end)"
            if path[pos:pos + 1] == "[" or path[pos:pos + 2] == ".[":
                raise UserError(f"{path}: extension fields ([ext] blocks) cannot be set by a "
                                "path; only the fields of conf/job.proto")
            raise UserError(f"{path}: expected a field name at {bad!r} (a path is dotted field "
                            f"names with [name] or [index] selectors, {_EXAMPLE.split('=')[0]})")
        sel = m.group(2)
        if sel is not None and not sel.strip():
            raise UserError(f"{path}: empty selector after {m.group(1)!r}; "
                            "give [name] or [index]")
        parts.append((m.group(1), sel.strip() if sel is not None else None))
        pos = m.end()
        if pos == len(path):
            return parts
        if path[pos] != ".":
            raise UserError(f"{path}: unexpected {path[pos:]!r} after {path[:pos]!r}; "
                            "expected '.' and a field name, or the end")
        pos += 1


# ------------------------------------------------------------------ apply ---
def apply(job: job_pb2.JobProto, path: str, value: str) -> None:
    """Set the field at `path` of `job` (in place) to `value`, parsed by the
    field's type: integers (range-checked), finite floats, bool
    (true/false/1/0), strings, enums (a value name such as kSGD, or its
    number). On a bad path or value, a UserError that names the path, the
    failing part, what was expected and the nearest valid names; `job` is
    then unchanged.
    """
    _apply(job, path, value)


def _apply(job: Any, path: str, value: str) -> tuple[Any, list[str]]:
    """`apply`; returns the parsed value and the set fields' paths in the
    locator's form (`neuralnet.layer[3].innerproduct_conf.num_output`)."""
    targets, field, index = _resolve(job, path)
    parsed = _parse_value(field, value, path)
    # everything is checked before the first write, so that an error leaves the job as it was
    for msg, _ in targets:
        if index is None:
            setattr(msg, field.name, parsed)
        else:
            getattr(msg, field.name)[index] = parsed
    return parsed, [f"{fp}.{field.name}" if fp else field.name for _, fp in targets]


def _resolve(job: Any, path: str) -> tuple[list[tuple[Any, str]], FieldDescriptor, int | None]:
    """The messages that hold the leaf field (with their locator paths), the
    leaf field and its index (a repeated scalar's element) or None."""
    parts = parse_path(path)
    targets: list[tuple[Any, str]] = [(job, "")]
    desc: Descriptor = job.DESCRIPTOR
    written = ""     # the path up to here, as the user wrote it
    for k, (name, sel) in enumerate(parts):
        owner = written or "the job"
        field = desc.fields_by_name.get(name)
        if field is None:
            raise UserError(f"{path}: {owner} has no field {name!r}" + _field_hint(name, desc))
        here = f"{written}.{name}" if written else name
        last = k == len(parts) - 1
        if sel is not None and not field.is_repeated:
            raise UserError(f"{path}: {here} is not repeated; remove [{sel}]")
        if field.cpp_type != _MESSAGE:
            if not last:
                raise UserError(f"{path}: {here} is {_type_name(field)}, not a message; it has "
                                f"no field {parts[k + 1][0]!r}")
            if not field.is_repeated:
                return targets, field, None
            if sel is None:
                raise UserError(f"{path}: {here} is repeated; add [index] (0-based) to set "
                                "one of its values")
            return targets, field, _scalar_index(targets, field, sel, path, here)
        if last:
            raise UserError(f"{path}: {here} is a message ({field.message_type.name}); give one "
                            f"of its fields: {_names([f.name for f in field.message_type.fields])}")
        if field.is_repeated:
            if sel is None:
                raise UserError(f"{path}: {here} is repeated; add [name] or [index] (0-based) "
                                f"to select one {name}, e.g. {here}[0]")
            targets = _select(targets, field, sel, path, owner)
            here += f"[{sel}]"
        else:
            targets = [(getattr(m, name), f"{fp}.{name}" if fp else name) for m, fp in targets]
        desc = field.message_type
        written = here
    raise AssertionError("unreachable: parse_path returns at least one part")


def _select(targets: list[tuple[Any, str]], field: FieldDescriptor, sel: str, path: str,
            owner: str) -> list[tuple[Any, str]]:
    """The elements of repeated message `field` (of the message(s) `owner`
    names) that `sel`, a name or an index, picks."""
    out: list[tuple[Any, str]] = []
    name = field.name
    for msg, fp in targets:
        items = getattr(msg, name)
        base = f"{fp}.{name}" if fp else name
        if not items:
            raise UserError(f"{path}: {owner} has no {name} to select [{sel}] from")
        if sel.isdigit():
            i = int(sel)
            if i >= len(items):
                raise UserError(f"{path}: index [{sel}] is out of range; {owner} has {len(items)} "
                                f"{name} elements ([0]..[{len(items) - 1}])")
            out.append((items[i], f"{base}[{i}]"))
            continue
        if "name" not in field.message_type.fields_by_name:
            raise UserError(f"{path}: {name} elements have no name field; select one by index "
                            f"([0]..[{len(items) - 1}])")
        hits = [(m, f"{base}[{i}]") for i, m in enumerate(items) if m.name == sel]
        if not hits:
            names = list(dict.fromkeys(m.name for m in items if m.name))
            msg_ = f"{path}: {owner} has no {name} named {sel!r}"
            hint = did_you_mean(sel, names)
            if hint:
                msg_ += hint
            elif not names:
                msg_ += f"; it has no named {name}"
            else:
                msg_ += f"; {name} names: {_names(names, _FEW)}"
            if re.fullmatch(r"-\d+", sel):
                msg_ += f"; an index counts from 0 ([0]..[{len(items) - 1}])"
            raise UserError(msg_)
        out.extend(hits)
    return out


def _scalar_index(targets: list[tuple[Any, str]], field: FieldDescriptor, sel: str, path: str,
                  here: str) -> int:
    if not sel.isdigit():
        raise UserError(f"{path}: [{sel}]: the values of {here} ({_type_name(field)}) are "
                        "selected by index (0-based), e.g. [0]")
    i = int(sel)
    for msg, _ in targets:
        n = len(getattr(msg, field.name))
        if i >= n:
            raise UserError(f"{path}: index [{sel}] is out of range; "
                            + (f"{here} has {n} value(s) ([0]..[{n - 1}])" if n else
                               f"{here} has no values")
                            + "; a path changes existing values only")
    return i


def _field_hint(name: str, desc: Descriptor) -> str:
    """'; did you mean ...?' for a misspelt field of `desc`, else its fields."""
    names = [f.name for f in desc.fields]
    if name in _REMOVED:
        return f"; {_REMOVED[name]}"
    if _DOC_NAMES.get(name) in names:
        return f"; did you mean '{_DOC_NAMES[name]}'? ('{name}' is a name from SINGA's docs)"
    hint = did_you_mean(name, names)
    if hint:
        return hint
    out = f"; fields of {desc.name}: {_names(names)}"
    if desc.is_extendable:
        out += "; extension fields ([ext] blocks) cannot be set by a path"
    return out


def _names(names: list[str], limit: int = 2 * _FEW) -> str:
    return ", ".join(names) if len(names) <= limit else (
        ", ".join(names[:limit]) + f", ... ({len(names)} in all)")


def _type_name(field: FieldDescriptor) -> str:
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return f"an enum ({field.enum_type.name})"
    if field.cpp_type in _INT_RANGE:
        return f"an {_INT_RANGE[field.cpp_type][0]}"
    return f"a {_TYPE_NAMES.get(field.cpp_type, 'value')}"


def _parse_value(field: FieldDescriptor, value: str, path: str) -> Any:
    """`value` converted to what `field` holds; a UserError naming the path otherwise."""
    ct = field.cpp_type
    if ct in _INT_RANGE:
        kind, lo, hi = _INT_RANGE[ct]
        try:
            n = int(value)
        except ValueError:
            raise UserError(f"{path}: expected an integer ({kind}), got {value!r}") from None
        if not lo <= n <= hi:
            raise UserError(f"{path}: {n} is out of range for {kind} ([{lo}, {hi}])")
        return n
    if ct in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        try:
            x = float(value)
        except ValueError:
            raise UserError(f"{path}: expected a number, got {value!r}") from None
        if not math.isfinite(x):
            raise UserError(f"{path}: expected a finite number, got {value!r}")
        # a float field would silently hold inf
        if ct == FieldDescriptor.CPPTYPE_FLOAT and abs(x) > _FLOAT_MAX:
            raise UserError(f"{path}: {value} is out of range for a float (|x| <= 3.4e38)")
        return x
    if ct == FieldDescriptor.CPPTYPE_BOOL:
        b = {"true": True, "1": True, "false": False, "0": False}.get(value.lower())
        if b is None:
            raise UserError(f"{path}: expected true or false (or 1 or 0), got {value!r}")
        return b
    if ct == FieldDescriptor.CPPTYPE_ENUM:
        enum = field.enum_type
        if value in enum.values_by_name:
            return enum.values_by_name[value].number
        if re.fullmatch(r"-?\d+", value) and int(value) in enum.values_by_number:
            return int(value)
        names = [v.name for v in enum.values]
        msg = f"{path}: expected a value of {enum.name}, got {value!r}"
        if value in _DOC_NAMES and _DOC_NAMES[value] in names:
            raise UserError(msg + f"; did you mean {_DOC_NAMES[value]}? ({value} is a name "
                            "from SINGA's docs)")
        hint = did_you_mean(value, names, quote="")
        if value in _REMOVED:
            hint = f"; {_REMOVED[value]}"
        raise UserError(msg + (hint or f"; values: {_names(names)}"))
    if ct == FieldDescriptor.CPPTYPE_STRING:
        return value.encode() if field.type == FieldDescriptor.TYPE_BYTES else value
    raise UserError(f"{path}: fields of this type cannot be set by a path")  # not in job.proto


# ------------------------------------------------------------ many at once ---
def apply_all(job: job_pb2.JobProto, overrides: Iterable[tuple[str, str]],
              locator: Locator | None = None) -> dict[str, str]:
    """Apply every (path, value) in order; a UserError listing every bad one
    (one per line) if any fails, after the good ones were applied.

    Returns, for the fields that the job.conf text also writes, their
    `PATH:LINE:COL` (from `locator`) -> "path=value", so that a problem found
    later at that place can say its value came from an override (see
    `note_overrides`); {} without a locator.
    """
    problems = []
    notes: dict[str, str] = {}
    for path, value in overrides:
        try:
            _, fields = _apply(job, path, value)
        except UserError as e:
            problems.append(str(e))
            continue
        for fp in fields:
            if locator is not None and locator.exact(fp) is not None:
                notes[locator.where(fp)] = f"{path}={value}"
    if problems:
        raise UserError("\n".join(problems))
    return notes


def note_overrides(problems: list[Problem], notes: dict[str, str]) -> list[Problem]:
    """`problems`, each one located where an override set a field (see
    `apply_all`) saying so: the text at that place holds another value."""
    return [Problem(p.where, f"{p.message} (value set by the override {notes[p.where]})",
                    p.severity) if p.where in notes else p for p in problems]


def check(job: job_pb2.JobProto, settings: Sequence[Setting]) -> None:
    """Try every value of every setting on a copy of `job` (never changed).

    Raises one UserError listing every problem, one per line, each starting
    with its setting's `where`: a bad path (once per setting), a bad value,
    two values that parse to the same field value (0.1 and 0.10), two
    settings of the same path. Settings that pass may still conflict with
    validation rules; `load_text` with the point's overrides checks those.
    """
    problems = [f"{s.where}: {s.path}: {msg}" for s, msg in _same_paths(settings)]
    for s in settings:
        try:
            _resolve(_copy(job), s.path)
        except UserError as e:
            problems.append(f"{s.where}: {e}")   # once: every value would repeat it
            continue
        seen: dict[Any, str] = {}
        for v in s.values:
            try:
                parsed, _ = _apply(_copy(job), s.path, v)
            except UserError as e:
                problems.append(f"{s.where}: {e}")
                continue
            if parsed in seen:
                problems.append(f"{s.where}: {s.path}: {seen[parsed]} and {v} are the same value")
            seen.setdefault(parsed, v)
    if problems:
        raise UserError("\n".join(problems))


def _copy(job: job_pb2.JobProto) -> Any:
    out = job_pb2.JobProto()
    out.CopyFrom(job)
    return out


def _same_paths(settings: Sequence[Setting]) -> list[tuple[Setting, str]]:
    first: dict[str, Setting] = {}
    out = []
    for s in settings:
        if s.path in first:
            out.append((s, f"set again (first by {first[s.path].where}); give all its values "
                           "in one --set"))
        first.setdefault(s.path, s)
    return out


# ----------------------------------------------------------------- points ---
def grid(settings: Sequence[Setting]) -> list[dict[str, str]]:
    """Every point of the sweep: the cartesian product of the settings'
    values, in the order given, the last setting varying fastest. A point
    maps each path to its value; no settings is one point, {}. Two settings
    of one path are a UserError."""
    _distinct(settings)
    return [dict(zip([s.path for s in settings], combo))
            for combo in itertools.product(*(s.values for s in settings))]


def sample(settings: Sequence[Setting], n: int, seed: int | None) -> list[dict[str, str]]:
    """`n` distinct points of `grid(settings)` drawn by `random.Random(seed)`
    (the same seed gives the same points), returned in grid order; the
    whole grid when `n` is at least its size. `n` < 1 is a UserError.
    The grid is not built: points are drawn as indices into it."""
    if n < 1:
        raise UserError(f"sample: the number of points must be at least 1, got {n}")
    _distinct(settings)
    size = math.prod(len(s.values) for s in settings)
    if n >= size:
        return grid(settings)
    # random.sample over a range draws without building the range
    return [_point(settings, i) for i in sorted(random.Random(seed).sample(range(size), n))]


def _point(settings: Sequence[Setting], index: int) -> dict[str, str]:
    """The grid point at `index` (mixed radix, the last setting the lowest digit)."""
    out: dict[str, str] = {}
    for s in reversed(settings):
        index, k = divmod(index, len(s.values))
        out[s.path] = s.values[k]
    return {s.path: out[s.path] for s in settings}


def _distinct(settings: Sequence[Setting]) -> None:
    same = _same_paths(settings)
    if same:
        raise UserError("\n".join(f"{s.where}: {s.path}: {msg}" for s, msg in same))


def label(point: dict[str, str]) -> str:
    """A short name of a point for tables: "base_lr=0.01 fc1.num_output=256".

    Each path is shortened to its last field, after the name (or index) of
    the innermost selected element when there is one (`fc1.num_output`,
    `w1.std`, `layer[0].batchsize[0]`); paths that would read alike keep
    more of their parts until they differ (`short_names`)."""
    short = short_names(list(point))
    return " ".join(f"{short[p]}={point[p]}" for p in point)


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each field path's short name, as `label` writes it (for column
    headers): distinct for distinct paths."""
    keys = list(dict.fromkeys(paths))
    parts = {p: [f"{n}[{s}]" if s is not None else n for n, s in parse_path(p)] for p in keys}
    short = {p: _short(parts[p]) for p in keys}
    for _ in range(max((len(v) for v in parts.values()), default=0)):
        clash = {p for p in keys if sum(short[q] == short[p] for q in keys) > 1}
        if not clash:
            break
        for p in clash:
            longer = ".".join(parts[p][-(short[p].count(".") + 2):])
            short[p] = longer if len(longer) > len(short[p]) else p
    return short


def _short(parts: list[str]) -> str:
    for part in reversed(parts[:-1]):
        name, _, sel = part.partition("[")
        if sel:
            sel = sel[:-1]
            return f"{part if sel.isdigit() else sel}.{parts[-1]}"
    return parts[-1]


# ----------------------------------------------------------------- render ---
def render(text: str, path: str, overrides: Iterable[tuple[str, str]]) -> str:
    """The job.conf text of `text` (the conf at `path`) with `overrides`
    applied: what a sweep writes as a point's (the best job's) conf.

    Protobuf's text format, so comments and layout are not kept; relative
    paths stay relative (they are resolved when the conf is loaded). A
    syntax error is a ConfigError, a bad override a UserError, and so is an
    `[ext] { }` block no loaded .proto defines (it would be dropped).
    """
    proto, locator = parse_text(text, path)
    missing = unknown_extensions(locator, severity="error")
    if missing:
        raise ConfigError(missing)
    apply_all(proto, overrides)
    out = text_format.MessageToString(proto)
    back, _ = parse_text(out, path)
    # a value printed too short to read back would make the written conf another job
    if back != proto:
        raise AssertionError(f"{path}: the rendered job.conf does not read back as the same job")
    return out
