"""What a layer class's `check_conf` reports, and the rules several layer
types share.

`Layer.check_conf(proto, submit=...)` checks a layer's own conf block from
the proto alone (no data files, no other layer), so that `singa validate`
reports it with the line and column of the field; `runtime.config.validate`
calls it for every layer of the conf and keeps only the rules that span
layers or the job. A `ConfProblem`'s message does not name the layer: the
caller prefixes "layer '<name>': ".
"""
from __future__ import annotations

from dataclasses import dataclass

from conf import job_pb2
from runtime.registry import did_you_mean

# Backends SINGA v0.3 builds only as compile options; this platform has none of them.
OPTIONAL_BACKENDS = ("lmdb", "hdfsfile", "imagefolder")


@dataclass(frozen=True)
class ConfProblem:
    """A problem of one layer's conf.

    `field`: where to show it, a field path under the layer
    ("innerproduct_conf.num_output", "type", "" for the layer itself);
    `severity`: "error" or "warning"; `about`: the field the rule checks when
    the caller may have reported it already (a required field left out), so
    that it is not reported twice ("" when the rule has no such field).
    """

    field: str
    message: str
    severity: str = "error"
    about: str = ""


def conf_missing(proto: job_pb2.LayerProto, conf: str, example: str) -> list[ConfProblem]:
    """[a problem] when the layer has no `conf` block (`example` shows one), else []."""
    if proto.HasField(conf):
        return []
    tname = job_pb2.LayerType.Name(proto.type)
    return [ConfProblem("type", f"a {tname} layer needs {conf} {{ {example} }}")]


def positive(proto: job_pb2.LayerProto, conf: str, f: str, what: str = "",
             allow_zero: bool = False) -> list[ConfProblem]:
    """[a problem] when `conf.f` is < 0, or 0 and not `allow_zero`; shown at
    the field when it is written, else at the conf block."""
    c = getattr(proto, conf)
    v = getattr(c, f)
    if v < 0 or (v == 0 and not allow_zero):
        return [ConfProblem(f"{conf}.{f}" if c.HasField(f) else conf,
                            f"{conf}.{f} must be {'>= 0' if allow_zero else '> 0'}{what}, got {v}",
                            about=f"{conf}.{f}")]
    return []


def store_backend(proto: job_pb2.LayerProto, submit: bool) -> list[ConfProblem]:
    """`store_conf.backend`, when given, names a registered store backend.
    One that SINGA has only as a compile option is a warning (an error with
    `submit`, which would fail)."""
    from runtime.io import store_registry  # importing runtime.io registers the backends

    b = proto.store_conf.backend
    if not b:
        return []
    known = store_registry.known()
    if b in known:
        return []
    if b in OPTIONAL_BACKENDS:
        return [ConfProblem("store_conf.backend",
                            f"store_conf.backend {b!r} is a compile option of SINGA that this "
                            "platform does not have; supported: " + ", ".join(known),
                            "error" if submit else "warning")]
    return [ConfProblem("store_conf.backend", f"unknown store_conf.backend {b!r}; supported: "
                        + ", ".join(known) + did_you_mean(b, known))]
