"""Jobs built in code: the net as a list or graph of layers, with the names
and fields of job.conf, turned into a `JobProto`.

    from runtime.builder import Job, Layer, Net

    data = Layer("data", type="kRecordInput",
                 store_conf={"backend": "kvfile", "path": "train.bin",
                             "batchsize": 64, "shape": [784]})
    ip = Layer("ip", type="kInnerProduct", srclayers=data,
               innerproduct_conf={"num_output": 10},
               param=[{"name": "w", "init": {"type": "kGaussian", "std": 0.01}},
                      {"name": "b", "init": {"type": "kConstant", "value": 0}}])
    loss = Layer("loss", type="kSoftmaxLoss", srclayers=[ip, data])
    job = Job("mlp", net=Net(data, ip, loss), train_steps=100,
              train_one_batch={"alg": "kBP"},
              updater={"type": "kSGD", "learning_rate": {"type": "kFixed", "base_lr": 0.1}},
              cluster={"workspace": "ws"})

    print(job)              # the job.conf text
    job.proto()             # the JobProto
    job.validate()          # what `singa validate` checks; ConfigError with every problem
    job.submit(hosts="h1:2,h2:2")   # as `singa submit` (runtime.driver.Driver)

Every keyword is a field of the message, as job.conf spells it: a nested
message is a dict (or a message), a repeated field a list (one value may be
given alone), an enum its name ("kTrain") or number. A user's extension is
given by its full name in brackets or as written in job.conf
(`**{"[rnnlm.data_conf]": {...}}`), or by its bare name when that is unique
(`data_conf={...}`); its `.proto` must be loaded (runtime.plugins.load).
A wrong name, type or enum value is a `UserError` that says which field of
which layer, what was given and what is expected.

A net is a graph: `srclayers` names layers or gives the Layer objects
(`Layer(...)(src)` sets them too). `Net(*layers)` takes the layers in
order, adding the layers they read from that are not listed (before their
first reader); `Net.sequential(*layers)` also connects each layer that
has no `srclayers` to the one before it, Keras's Sequential.

Round trip: `parse_text(str(job))` gives `job.proto()` back (tested);
`singa export BUILDER.py` writes that text to a file.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from conf import job_pb2
from runtime.errors import UserError

__all__ = ["Job", "Layer", "Net", "fill", "to_text"]


# ---------------------------------------------------------------- fields ---
def fill(msg: Message, fields: dict[str, Any], where: str = "") -> Message:
    """Set `fields` on `msg` (see the module doc for the value forms); returns `msg`.

    `where` prefixes error messages (e.g. "layer 'ip1'"). Fields already set
    are overwritten; repeated fields get the values appended.
    """
    for key, value in fields.items():
        if value is None:
            continue  # "not given", as when a field is left out of job.conf
        field, path = _field(msg, key, where)
        _set(msg, field, value, path)
    return msg


def _field(msg: Message, key: str, where: str) -> tuple[FieldDescriptor, str]:
    desc = msg.DESCRIPTOR
    head = f"{where}: " if where else ""
    if key in desc.fields_by_name:
        return desc.fields_by_name[key], _join(where, key)
    exts = descriptor_pool.Default().FindAllExtensions(desc)
    name = key[1:-1] if key.startswith("[") and key.endswith("]") else key
    found = [f for f in exts if f.full_name == name] or [f for f in exts if f.name == name]
    if len(found) == 1:
        return found[0], _join(where, f"[{found[0].full_name}]")
    if len(found) > 1:
        raise UserError(f"{head}{key!r} names several extensions of {desc.full_name}: "
                        + ", ".join(f"[{f.full_name}]" for f in found) + "; give the full name")
    names = [f.name for f in desc.fields] + [f"[{f.full_name}]" for f in exts]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = ("did you mean " + " or ".join(repr(c) for c in close) + "?") if close else \
        f"fields of {desc.name}: " + ", ".join(sorted(names))
    if key.startswith("[") or "." in key:
        hint = (f"no loaded .proto extends {desc.full_name} with {name} (load it with "
                "runtime.plugins.load); " + hint)
    raise UserError(f"{head}{desc.name} has no field {key!r}; {hint}")


def _join(where: str, name: str) -> str:
    """`layer 'ip1': innerproduct_conf` then `layer 'ip1': innerproduct_conf.num_output`."""
    if not where:
        return name
    if where == "job" or (where.startswith("layer '") and ": " not in where):
        return f"{where}: {name}"
    return f"{where}.{name}"


def _set(msg: Message, field: FieldDescriptor, value: Any, path: str) -> None:
    is_ext = field.is_extension
    if field.is_repeated:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        target = msg.Extensions[field] if is_ext else getattr(msg, field.name)
        for k, v in enumerate(values):
            where = f"{path}[{k}]"
            if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                _message(target.add(), v, where)
            else:
                target.append(_scalar(field, v, where))
        return
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        sub = msg.Extensions[field] if is_ext else getattr(msg, field.name)
        _message(sub, value, path)
        return
    v = _scalar(field, value, path)
    if is_ext:
        msg.Extensions[field] = v
    else:
        setattr(msg, field.name, v)


def _message(sub: Message, value: Any, path: str) -> None:
    if isinstance(value, Message):
        if value.DESCRIPTOR is not sub.DESCRIPTOR:
            raise UserError(f"{path}: expected a {sub.DESCRIPTOR.name} (or a dict of its "
                            f"fields), got a {value.DESCRIPTOR.name}")
        sub.CopyFrom(value)
    elif hasattr(value, "to_proto"):
        sub.CopyFrom(value.to_proto())
    elif isinstance(value, dict):
        sub.SetInParent()  # `conf { }` with no fields is still written
        fill(sub, value, path)
    else:
        raise UserError(f"{path}: expected a dict of {sub.DESCRIPTOR.name} fields, "
                        f"got {type(value).__name__} {value!r}")


_KINDS = {
    FieldDescriptor.CPPTYPE_INT32: "an integer", FieldDescriptor.CPPTYPE_INT64: "an integer",
    FieldDescriptor.CPPTYPE_UINT32: "a non-negative integer",
    FieldDescriptor.CPPTYPE_UINT64: "a non-negative integer",
    FieldDescriptor.CPPTYPE_FLOAT: "a number", FieldDescriptor.CPPTYPE_DOUBLE: "a number",
    FieldDescriptor.CPPTYPE_BOOL: "true or false", FieldDescriptor.CPPTYPE_STRING: "a string",
}


def _scalar(field: FieldDescriptor, value: Any, path: str) -> Any:
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        enum = field.enum_type
        if isinstance(value, str) and value in enum.values_by_name:
            return enum.values_by_name[value].number
        if isinstance(value, int) and not isinstance(value, bool) and value in enum.values_by_number:
            return value
        names = list(enum.values_by_name)
        close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)
        hint = ("did you mean " + " or ".join(close) + "?") if close else \
            "valid values: " + ", ".join(names)
        raise UserError(f"{path}: {value!r} is not a {enum.name}; {hint}")
    kind = _KINDS.get(field.cpp_type, "a value")
    ok = {
        FieldDescriptor.CPPTYPE_BOOL: isinstance(value, bool),
        FieldDescriptor.CPPTYPE_STRING: isinstance(value, (str, os.PathLike)),
        FieldDescriptor.CPPTYPE_FLOAT: isinstance(value, (int, float)) and not isinstance(value, bool),
        FieldDescriptor.CPPTYPE_DOUBLE: isinstance(value, (int, float)) and not isinstance(value, bool),
    }.get(field.cpp_type, isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise UserError(f"{path}: expected {kind}, got {type(value).__name__} {value!r}")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    try:  # protobuf's own checks: integer ranges, float32, UTF-8
        probe = _probe(field)
        if field.is_repeated:
            (probe.Extensions[field] if field.is_extension
             else getattr(probe, field.name)).append(value)
        elif field.is_extension:
            probe.Extensions[field] = value
        else:
            setattr(probe, field.name, value)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {value!r} does not fit: {e}") from None
    return value


def _probe(field: FieldDescriptor) -> Message:
    """An empty message of the field's container type, to let protobuf range-check a value."""
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(field.containing_type)()


# ---------------------------------------------------------------- layers ---
class Layer:
    """One `layer { }` of the net: `Layer(name, type=..., srclayers=..., **fields)`.

    `srclayers` is a Layer, a name, or a list of them; calling the layer
    with its sources (`Layer(...)(a, b)`) sets them and returns the layer.
    `type` is a built-in LayerType (its name or number); a user's layer is
    `user_type="Name"`, as in job.conf.
    """

    def __init__(self, name: str, type: str | int | None = None, *,
                 srclayers: Layer | str | Iterable[Layer | str] | None = None, **fields: Any):
        if not isinstance(name, str) or not name:
            raise UserError(f"Layer needs a name string (what srclayers refer to), got {name!r}")
        self.name = name
        if isinstance(type, str) and type not in job_pb2.LayerType.keys():
            close = difflib.get_close_matches(type, job_pb2.LayerType.keys(), n=3, cutoff=0.6)
            raise UserError(
                f"layer '{name}': type {type!r} is not a built-in layer type"
                + (f"; did you mean {' or '.join(close)}?" if close else "")
                + f" (a user's layer is user_type={type!r})")
        self.type = type
        self.srclayers: list[Layer | str] | None = None if srclayers is None else _as_list(srclayers)
        self.fields = fields
        # check the fields now, so a mistake shows where the layer is written
        self.to_proto()

    def __call__(self, *srcs: Layer | str) -> Layer:
        self.srclayers = [s for src in srcs for s in _as_list(src)]
        return self

    def src_names(self) -> list[str]:
        return [s.name if isinstance(s, Layer) else s for s in self.srclayers or []]

    def to_proto(self) -> job_pb2.LayerProto:
        proto = job_pb2.LayerProto(name=self.name)
        where = f"layer '{self.name}'"
        for src in self.srclayers or []:
            if not isinstance(src, (Layer, str)):
                raise UserError(f"{where}: srclayers takes Layers or layer names, "
                                f"got {type(src).__name__} {src!r}")
        proto.srclayers.extend(self.src_names())
        if self.type is not None:
            _set(proto, proto.DESCRIPTOR.fields_by_name["type"], self.type, f"{where}: type")
        return fill(proto, self.fields, where)

    def __repr__(self) -> str:
        return f"Layer({self.name!r}, srclayers={self.src_names()})"


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class Net:
    """The `neuralnet { }` block: layers in order, plus NetProto fields
    (`unroll_len`, `partition_dim`). See the module doc for the graph rules."""

    def __init__(self, *layers: Layer | Iterable[Layer], **fields: Any):
        flat = [l for item in layers for l in (_as_list(item) if isinstance(item, (list, tuple))
                                                 else [item])]
        checked: list[Layer] = []
        for l in flat:
            if not isinstance(l, Layer):
                raise UserError(f"Net takes Layers, got {type(l).__name__} {l!r}")
            checked.append(l)
        self.layers = _with_sources(checked)
        self.fields = fields
        self.to_proto()

    @classmethod
    def sequential(cls, *layers: Layer | Iterable[Layer], **fields: Any) -> Net:
        """A chain: each layer without `srclayers` reads the layer before it."""
        flat: list[Any] = [l for item in layers for l in (_as_list(item) if isinstance(item, (list, tuple))
                                                          else [item])]  # Net() checks they are Layers
        for prev, layer in zip(flat, flat[1:]):
            if isinstance(layer, Layer) and layer.srclayers is None:
                layer.srclayers = [prev]
        return cls(*flat, **fields)

    def to_proto(self) -> job_pb2.NetProto:
        net = job_pb2.NetProto()
        fill(net, self.fields, "neuralnet")
        for layer in self.layers:
            net.layer.add().CopyFrom(layer.to_proto())
        return net

    def __iter__(self):
        return iter(self.layers)


def _with_sources(layers: list[Layer]) -> list[Layer]:
    """`layers` plus the Layer objects they read from that are not listed,
    each placed before its first reader (sources before readers)."""
    out: list[Layer] = []
    listed = {id(l) for l in layers}
    placed: set[int] = set()

    def place(layer: Layer, path: tuple[int, ...]) -> None:
        if id(layer) in placed or id(layer) in path:
            return
        for src in layer.srclayers or []:
            if isinstance(src, Layer) and id(src) not in listed:
                place(src, path + (id(layer),))
        placed.add(id(layer))
        out.append(layer)

    for layer in layers:
        place(layer, ())
    return out


# ------------------------------------------------------------------- job ---
class Job:
    """A job: `Job(name, net=..., **JobProto fields)`; `str(job)` is its job.conf."""

    def __init__(self, name: str | None = None, net: Net | Iterable[Layer] | dict | None = None,
                 **fields: Any):
        self.name = name
        if net is not None and not isinstance(net, (Net, dict, job_pb2.NetProto)):
            net = Net(*_as_list(net))
        self.net = net
        self.fields = fields
        self.to_proto()

    def to_proto(self) -> job_pb2.JobProto:
        job = job_pb2.JobProto()
        if self.name is not None:
            job.name = self.name
        if isinstance(self.net, Net):
            job.neuralnet.CopyFrom(self.net.to_proto())
        elif self.net is not None:
            _message(job.neuralnet, self.net, "neuralnet")
        return fill(job, self.fields, "job")

    proto = to_proto

    def text(self) -> str:
        """The job.conf text (protobuf text format, as `singa validate` reads it)."""
        return to_text(self.to_proto())

    def __str__(self) -> str:
        return self.text()

    def write(self, path: str | os.PathLike) -> Path:
        """Write the job.conf text to `path`; returns the path."""
        p = Path(path)
        p.write_text(self.text())
        return p

    def validate(self, path: str = "job.conf", *, strict: bool = False, submit: bool = False):
        """Check the job as `singa validate` does; returns the `JobConf` (the
        proto with its relative paths resolved against the current directory)
        or raises `ConfigError` with every problem, located in the text
        `str(job)` as `path:LINE:COL`."""
        from runtime.config import load_text

        return load_text(self.text(), path, strict=strict, submit=submit,
                         base=str(Path.cwd() / "job.conf"))

    def submit(self, *, modules: Iterable[str] = (), protos: Iterable[str] = (),
               detach: bool = False, **options: Any) -> int:
        """Submit as `singa submit` would, through `runtime.driver.Driver`:
        `options` are its options (hosts, hostfile, launcher, name, ...),
        `modules` and `protos` the user code every process loads (each
        `.proto` ships compiled). Returns the exit code of `singa submit`
        (0 only if the job SUCCEEDED), or with `detach` the job id."""
        from runtime import plugins
        from runtime.driver import Driver

        user = tuple(protos) + tuple(modules)
        plugins.load(user)
        shipped = tuple(os.path.abspath(m) if m.endswith(".py") else m
                        for m in plugins.expand(user))
        return Driver(modules=shipped, **options).submit(self.to_proto(), detach=detach)


def to_text(proto: Message) -> str:
    """A message as job.conf text, in the order SINGA's examples write it:
    plain fields before blocks; a layer's name, type and srclayers first and
    its params last; the job's neuralnet after its algorithm and updater.
    Values print as protobuf's text format prints them (floats parse back
    to the same float32), so `parse_text(to_text(p)) == p`."""
    lines: list[str] = []
    _print(proto, lines, 0)
    return "\n".join(lines) + "\n" if lines else ""


_FIRST = {"name": 0, "type": 1, "user_type": 2, "srclayers": 3}
_JOB_BLOCKS = {"train_one_batch": 0, "updater": 1, "neuralnet": 2, "cluster": 3}


def _order(msg: Message, field: FieldDescriptor) -> tuple:
    block = field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
    if msg.DESCRIPTOR.full_name == "singa.LayerProto" and field.name == "param":
        return (3, 0)
    if msg.DESCRIPTOR.full_name == "singa.JobProto" and field.name in _JOB_BLOCKS:
        return (2, _JOB_BLOCKS[field.name])
    if field.name in _FIRST and not field.is_extension:
        return (0, _FIRST[field.name])
    return (2 if block else 1, field.number)


def _print(msg: Message, lines: list[str], depth: int) -> None:
    pad = "  " * depth
    fields = sorted(msg.ListFields(), key=lambda fv: _order(msg, fv[0]))
    for field, value in fields:
        name = f"[{field.full_name}]" if field.is_extension else field.name
        values = value if field.is_repeated else [value]
        for v in values:
            if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                lines.append(f"{pad}{name} {{")
                _print(v, lines, depth + 1)
                lines.append(f"{pad}}}")
            else:
                out = _FieldPrinter()
                text_format.PrintFieldValue(field, v, out)
                lines.append(f"{pad}{name}: {out.getvalue()}")


class _FieldPrinter:
    """A minimal text sink for `text_format.PrintFieldValue`."""

    def __init__(self):
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def getvalue(self) -> str:
        return "".join(self.parts)
