"""Resolving the file paths a job.conf names.

SINGA's confs are written to be run from the SINGA root
(`./bin/singa-run.sh -conf examples/rbm/rbm1.conf` with `workspace:
"examples/rbm/rbm1/"`), so a relative path resolves against the working
directory first, as in SINGA; a conf that travels with its data (paths
written relative to the conf) still works through the fallback:

- input files (data stores, mean/std files, vocabularies, checkpoints to
  load) resolve against the working directory if they exist there, else
  against the job.conf's directory if they exist there. If neither exists
  the path is *missing*: the caller reports it, listing both paths tried,
  and the working directory's path is kept.
- output paths (kCSVOutput / kRecordOutput stores) and `cluster.workspace`
  go under the working directory if they exist there or their parent
  directory does (they are created there); else under the conf directory
  if they or their parent exist there; else under the working directory
  (created with its parents).
- absolute paths and `~` are used as written; URLs (`hdfs://...`) are left
  alone and not checked.

`resolve_paths` rewrites the proto in place to absolute paths and returns
what it found; it never raises. It runs at submit, in the submitting
directory, and the job master and the job's processes get the resolved
proto, so their own working directory never matters.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from conf import job_pb2

OUTPUT_LAYERS = (job_pb2.kCSVOutput, job_pb2.kRecordOutput)


@dataclass
class PathIssue:
    """An input path that exists in none of the places tried."""

    field_path: str         # e.g. neuralnet.layer[0].store_conf.path
    value: str              # as written in the conf
    tried: list[str]        # absolute paths tried, in order
    layer_index: int | None = None  # None for job-level fields (checkpoint_path)

    def message(self, what: str = "data file") -> str:
        tried = " and ".join(self.tried) if len(self.tried) > 1 else self.tried[0]
        return f"{what} {self.value!r} not found (tried {tried})"


@dataclass
class PathReport:
    missing: list[PathIssue] = field(default_factory=list)
    workspace_defaulted: bool = False     # no cluster.workspace: <conf dir>/workspace
    resolved: dict[str, str] = field(default_factory=dict)  # field path -> absolute path


def _is_url(p: str) -> bool:
    return "://" in p


def _candidates(value: str, conf_dir: str, cwd: str) -> list[str]:
    """Where a relative `value` may be: the working directory's path first
    (SINGA's base), then the conf directory's."""
    p = os.path.expanduser(value)
    if os.path.isabs(p):
        return [os.path.normpath(p)]
    out = [os.path.normpath(os.path.join(cwd, p))]
    alt = os.path.normpath(os.path.join(conf_dir, p))
    if alt not in out:
        out.append(alt)
    return out


def resolve_input(value: str, conf_dir: str, cwd: str | None = None) -> tuple[str, list[str], bool]:
    """(resolved absolute path, paths tried, whether it exists)."""
    if _is_url(value):
        return value, [value], True
    tried = _candidates(value, conf_dir, cwd or os.getcwd())
    for p in tried:
        if os.path.exists(p):
            return p, tried, True
    return tried[0], tried, False


def resolve_output(value: str, conf_dir: str, cwd: str | None = None) -> str:
    """The absolute path an output (file or directory) is written to: the
    first candidate that exists or whose parent directory exists, else the
    working directory's path."""
    if _is_url(value):
        return value
    tried = _candidates(value, conf_dir, cwd or os.getcwd())
    for p in tried:
        if os.path.exists(p) or os.path.isdir(os.path.dirname(p)):
            return p
    return tried[0]


def input_fields(layer: job_pb2.LayerProto) -> list[tuple[str, object, str]]:
    """(field path relative to the layer, the message holding it, field name)
    for each input-file field the layer sets."""
    out = []
    if layer.HasField("store_conf"):
        sc = layer.store_conf
        if layer.type not in OUTPUT_LAYERS and sc.HasField("path"):
            out.append(("store_conf.path", sc, "path"))
        for f in ("mean_file", "std_file"):
            if sc.HasField(f) and getattr(sc, f):
                out.append((f"store_conf.{f}", sc, f))
    for conf in ("sharddata_conf", "lmdbdata_conf"):
        if layer.HasField(conf) and getattr(layer, conf).HasField("path"):
            out.append((f"{conf}.path", getattr(layer, conf), "path"))
    if layer.HasField("rgbimage_conf") and layer.rgbimage_conf.meanfile:
        out.append(("rgbimage_conf.meanfile", layer.rgbimage_conf, "meanfile"))
    if layer.HasField("char_rnn_conf"):
        cc = layer.char_rnn_conf
        if layer.type != job_pb2.kCharRNNOutput and cc.HasField("path"):
            out.append(("char_rnn_conf.path", cc, "path"))
        if cc.HasField("vocab_path"):
            out.append(("char_rnn_conf.vocab_path", cc, "vocab_path"))
    return out


def resolve_paths(job: job_pb2.JobProto, conf_path: str, cwd: str | None = None) -> PathReport:
    """Rewrite every path of `job` to an absolute one (in place); report the
    input paths that exist nowhere and whether the workspace was defaulted."""
    conf_dir = os.path.dirname(os.path.abspath(conf_path))
    cwd = cwd or os.getcwd()
    rep = PathReport()

    def do_input(fpath: str, value: str, index: int | None) -> str:
        resolved, tried, ok = resolve_input(value, conf_dir, cwd)
        if not ok:
            rep.missing.append(PathIssue(fpath, value, tried, index))
        rep.resolved[fpath] = resolved
        return resolved

    for i, layer in enumerate(job.neuralnet.layer):
        base = f"neuralnet.layer[{i}]"
        for rel, msg, name in input_fields(layer):
            setattr(msg, name, do_input(f"{base}.{rel}", getattr(msg, name), i))
        if layer.type in OUTPUT_LAYERS and layer.HasField("store_conf") \
                and layer.store_conf.HasField("path"):
            out = resolve_output(layer.store_conf.path, conf_dir, cwd)
            rep.resolved[f"{base}.store_conf.path"] = out
            layer.store_conf.path = out

    for k, value in enumerate(list(job.checkpoint_path)):
        job.checkpoint_path[k] = do_input(f"checkpoint_path[{k}]", value, None)

    if job.cluster.workspace:
        job.cluster.workspace = resolve_output(job.cluster.workspace, conf_dir, cwd)
    else:
        job.cluster.workspace = os.path.join(conf_dir, "workspace")
        rep.workspace_defaulted = True
    rep.resolved["cluster.workspace"] = job.cluster.workspace
    return rep
