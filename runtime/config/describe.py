"""What a job is, in words: the summary `singa validate` prints.

`describe(job)` turns a validated `JobConf` into a JSON-able dict; `render(d)`
prints that dict as text, so `--json` and the text always say the same:

- the job's name and conf path;
- for each phase the job uses (train, validation, test): its layers in
  conf order with type, srclayers, output shape (batch first) and params;
- with several workers per group, the training net as they run it: per
  partition (worker) its layers `name@p` in execution order, with the
  partition dimension, the connection layers the builder inserted (split,
  slice, concate, bridge pairs between workers), their output shapes and
  params (a dim-1 layer's params are parts `name@p` of the conf param);
- total params of the training net and their bytes (float32), counting a
  shared param once;
- the algorithm, the updater (type, momentum, weight decay, clipping) and
  the learning-rate schedule as a formula;
- the triggers (display, test, validation, checkpoint) as SINGA fires them;
- the cluster plan: process counts by SINGA's formulas and, per process, the
  worker (group, id) and server (group, id) pairs it hosts;
- the checkpoint files params are loaded from (those that exist; a missing
  one has its warning instead);
- the estimated memory of each process (runtime.config.memory) and the host's;
- every path the job reads or writes, as resolved (see paths.py);
- the workspace (and whether it was defaulted), and every warning.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from conf import job_pb2
from runtime.cluster import Cluster
from runtime.config.validate import PHASE_NAMES, phase_layers

if TYPE_CHECKING:
    from runtime.neuralnet.layer import Layer

# A plan listing this many processes or more is shortened in the text output.
MAX_PROCS_SHOWN = 64


def _num(x: float) -> str:
    """A float32 proto value as written (0.001, not 0.0010000000474974513)."""
    return f"{float(np.float32(x)):.7g}"


def lr_formula(lr: job_pb2.LRGenProto) -> str:
    """The learning-rate schedule in words, e.g. 'kStep: 0.001 * 0.997^(step // 60)'."""
    if lr.user_type:
        return f"user generator {lr.user_type!r} (base_lr {_num(lr.base_lr)})"
    t = lr.type
    name = job_pb2.ChangeMethod.Name(t)
    b = _num(lr.base_lr)
    if t == job_pb2.kFixed:
        body = b
    elif t == job_pb2.kStep:
        c = lr.step_conf
        body = f"{b} * {_num(c.gamma)}^(step // {c.change_freq})"
    elif t == job_pb2.kFixedStep:
        c = lr.fixedstep_conf
        body = ", ".join(f"{_num(r)} from step {s}" for s, r in zip(c.step, c.step_lr))
    elif t == job_pb2.kInverse:
        c = lr.inverse_conf
        body = f"{b} * (1 + {_num(c.gamma)} * step)^-{_num(c.pow)}"
    elif t == job_pb2.kInverseT:
        body = f"{b} / (1 + step / {_num(lr.inverset_conf.final_lr)})"
    elif t == job_pb2.kExponential:
        body = f"{b} / 2^(step / {lr.exponential_conf.change_freq})"
    elif t == job_pb2.kLinear:
        c = lr.linear_conf
        body = (f"(1 - step/{c.change_freq}) * {b} + (step/{c.change_freq}) * "
                f"{_num(c.final_lr)}")
    else:
        body = f"base_lr {b}"
    return f"{name}: {body}"


def _type(layer: job_pb2.LayerProto) -> str:
    return layer.user_type or job_pb2.LayerType.Name(layer.type)


def _phase(job, phase: int) -> dict[str, Any]:
    net = job.nets.get(phase)
    built: dict[str, Layer] = {}
    if net is not None:
        for l in net.layers:  # an unrolled net: each conf layer by its first copy
            built.setdefault(net.origin(l), l)
    rows = []
    count = 0
    for _, proto in phase_layers(job.proto.neuralnet, phase):
        layer = built.get(proto.name)
        params = []
        for k, pp in enumerate(proto.param):
            p = layer.params[k] if layer is not None and k < len(layer.params) else None
            shape = list(p.shape) if p is not None else None
            size = p.size if p is not None else None
            shared = pp.share_from or None
            params.append({"name": pp.name, "shape": shape, "size": size, "share_from": shared})
            if size is not None and not shared:
                count += size
        rows.append({
            "name": proto.name,
            "type": _type(proto),
            "srclayers": list(proto.srclayers),
            "shape": list(layer.shape) if layer is not None else None,
            "params": params,
        })
    names = {r["name"] for r in rows}
    inserted = [l.name for l in net.layers if net.origin(l) not in names] \
        if net is not None else []
    unknown = sum(1 for r in rows if r["shape"] is None)
    return {"layers": rows, "inserted": inserted, "params": count, "bytes": 4 * count,
            "not_set_up": unknown}


def _partitions(job) -> dict[str, Any] | None:
    """The training net over nworkers_per_group partitions (see the module
    docstring), or None for one worker per group."""
    net = getattr(job.validation, "partitioned", None) if job.validation is not None else None
    if net is None:
        return None
    from runtime.neuralnet.partition import pdim, whole_name
    from runtime.neuralnet.unroll import origin_name

    conf = {l.name for l in job.proto.neuralnet.layer}
    parts: list[list[dict]] = [[] for _ in range(net.npartitions)]
    added = bridges = 0
    for l in net.layers:
        row = {
            "name": l.name,
            "type": _type(l.proto),
            "dim": pdim(l.proto),
            "srclayers": [s.name for s in net.srclayers(l)],
            "shape": list(l.shape),
            "params": [{"name": p.name, "shape": list(p.shape)} for p in l.params],
            "inserted": origin_name(whole_name(l.name)) not in conf,
            "worker": l.proto.partition_id,
        }
        if getattr(l, "grad_scale", 1.0) != 1.0:
            row["grad_scale"] = float(l.grad_scale)
        parts[l.proto.partition_id].append(row)
        added += row["inserted"]
        bridges += l.proto.type == job_pb2.kBridgeSrc
    served = net.group_params()
    return {"count": net.npartitions, "partitions": parts, "inserted": added,
            "bridge_pairs": bridges,
            "server_params": [{"name": p.name, "shape": list(p.shape), "replicas": net.replicas(p)}
                              for p in served]}


def _triggers(p: job_pb2.JobProto) -> dict[str, Any]:
    t: dict[str, Any] = {}
    if p.disp_freq > 0:
        t["display"] = {"every": p.disp_freq, "after": p.disp_after}
    for kind, freq, steps, after in (
            ("test", p.test_freq, p.test_steps, p.test_after),
            ("validation", p.validate_freq, p.validate_steps, p.validate_after)):
        # a job that tests (validates) at all does so at train_steps too (worker.run)
        if steps > 0 and (freq > 0 or p.train_steps > 0):
            t[kind] = {"every": freq, "steps": steps, "after": after}
            if p.train_steps > 0:
                t[kind]["final_step"] = p.train_steps
    if p.train_steps <= 0:
        t["test_only"] = {"steps": p.test_steps}
        return t
    ck = {"final_step": p.train_steps}
    if p.checkpoint_freq > 0:
        ck.update(every=p.checkpoint_freq, after=p.checkpoint_after)
    t["checkpoint"] = ck
    return t


def describe(job) -> dict[str, Any]:
    """The summary of a validated `JobConf` as a JSON-able dict."""
    p = job.proto
    phases = {}
    val = job.validation
    for ph in (val.phases if val is not None else [job_pb2.kTrain]):
        phases[PHASE_NAMES[ph]] = _phase(job, ph)
    # the training net's params (a test-only job: its first net's)
    train = phases.get("train") or next(iter(phases.values()), {"params": 0, "bytes": 0})
    alg = p.train_one_batch
    alg_d: dict[str, Any] = {"alg": alg.user_alg or job_pb2.AlgType.Name(alg.alg)}
    if alg.alg == job_pb2.kCD:
        alg_d["cd_k"] = alg.cd_conf.cd_k
    u = p.updater
    upd_d: dict[str, Any] = {
        "type": u.user_type or job_pb2.UpdaterType.Name(u.type),
        "momentum": float(np.float32(u.momentum)),
        "weight_decay": float(np.float32(u.weight_decay)),
        "learning_rate": {
            "type": u.learning_rate.user_type or job_pb2.ChangeMethod.Name(u.learning_rate.type),
            "base_lr": float(np.float32(u.learning_rate.base_lr)),
            "schedule": lr_formula(u.learning_rate),
        },
    }
    if u.clip_high > u.clip_low:
        upd_d["clip"] = [float(np.float32(u.clip_low)), float(np.float32(u.clip_high))]
    upd: dict[str, Any] | None = upd_d
    if not p.HasField("updater"):
        upd = None  # a test-only job
    c = Cluster.from_proto(p.cluster)
    cluster = {
        "nworker_groups": c.nworker_groups, "nworkers_per_group": c.nworkers_per_group,
        "nserver_groups": c.nserver_groups, "nservers_per_group": c.nservers_per_group,
        "nworkers_per_procs": c.nworkers_per_procs, "nservers_per_procs": c.nservers_per_procs,
        "server_worker_separate": c.server_worker_separate, "share_memory": c.share_memory,
        "nworker_procs": c.nworker_procs, "nserver_procs": c.nserver_procs, "nprocs": c.nprocs,
        "procs": [{"procs": e["procs"], "workers": [list(w) for w in e["workers"]],
                   "servers": [list(s) for s in e["servers"]]} for e in c.plan()],
    }
    return {
        "name": p.name,
        "path": job.path,
        "phases": phases,
        "partitions": _partitions(job),
        "params": {"count": train["params"], "bytes": train["bytes"],
                   "complete": not train.get("not_set_up")},
        "algorithm": alg_d,
        "train_steps": p.train_steps,
        "updater": upd,
        "triggers": _triggers(p),
        "cluster": cluster,
        "workspace": {"path": p.cluster.workspace,
                      "default": bool(job.paths.workspace_defaulted) if job.paths else False},
        "checkpoint_path": list(p.checkpoint_path),
        # a checkpoint that is not there loads nothing: only its warning is shown
        "params_loaded_from": [c for c in p.checkpoint_path if os.path.isfile(c)],
        "memory": _memory(job),
        "paths": _paths(job),
        "warnings": [str(w) for w in job.warnings],
    }


def _memory(job) -> dict[str, Any] | None:
    """The estimated memory per process (runtime.config.memory) and the host's."""
    procs = getattr(job.validation, "memory", None) if job.validation is not None else None
    if not procs:
        return None
    from runtime.config.memory import host_memory

    host, total = host_memory()
    return {"host": host, "host_bytes": total, "procs": [m.as_dict() for m in procs]}


def _paths(job) -> list[dict[str, Any]]:
    """Every path of the job as resolved: field, layer name (None for
    job-level fields), absolute path and whether an input is missing."""
    rep = job.paths
    if rep is None:
        return []
    missing = {m.field_path for m in rep.missing}
    layers = job.proto.neuralnet.layer
    out = []
    for full, path in rep.resolved.items():
        layer, f = None, full
        if full.startswith("neuralnet.layer["):   # neuralnet.layer[3].store_conf.path
            i = int(full[len("neuralnet.layer["):full.index("]")])
            layer, f = layers[i].name, full[full.index("]") + 2:]
        out.append({"field": f, "layer": layer, "path": path, "missing": full in missing})
    return out


# ------------------------------------------------------------------- text ---

def _shape(s) -> str:
    return "x".join(str(d) for d in s) if s is not None else "?"


def _params_cell(params: list[dict]) -> str:
    if not params:
        return "-"
    parts = []
    for q in params:
        if q["share_from"]:
            parts.append(f"{q['name']}=shares {q['share_from']}")
        elif q["size"] is None:
            parts.append(f"{q['name']}")
        else:
            parts.append(f"{q['name']} {_shape(q['shape'])}")
    return ", ".join(parts)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _render_partitions(parts: dict[str, Any]) -> list[str]:
    n = parts["count"]
    out = ["", f"train net over {n} partitions, one per worker of a group (dim 0 = batch, "
               f"1 = feature; * = inserted by the net builder): {parts['inserted']} layers "
               f"inserted, {parts['bridge_pairs']} bridge pairs between workers"]
    for p, rows in enumerate(parts["partitions"]):
        out.append(f" partition {p} (worker {p}):")
        table = [["layer", "type", "dim", "srclayers", "output shape", "params"]]
        for r in rows:
            params = ", ".join(f"{q['name']} {_shape(q['shape'])}" for q in r["params"]) or "-"
            srcs = ",".join(r["srclayers"]) or "-"
            if r["type"] == "kBridgeDst":  # its source runs on the other worker
                srcs = "from worker " + r["name"][r["name"].index("@") + 1:].split("-", 1)[0]
            table.append([("*" if r["inserted"] else "") + r["name"], r["type"], str(r["dim"]),
                          srcs, _shape(r["shape"]), params])
        out += ["  " + line for line in _table(table)]
    served = parts["server_params"]
    split = [q for q in served if q["replicas"] == 1]
    if split and n > 1:
        out.append(" params partitioned by feature (each part its own param on the servers): "
                   + ", ".join(f"{q['name']} {_shape(q['shape'])}" for q in split))
    return out


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.2f} MB"


def render(d: dict[str, Any]) -> str:
    """The text `singa validate` prints for the dict `describe` made."""
    out = [f"job '{d['name'] or '(no name)'}' ({d['path']}): valid"]
    for pname, ph in d["phases"].items():
        out.append("")
        out.append(f"{pname} net: {len(ph['layers'])} layers, {ph['params']:,} params "
                   f"({_mb(ph['bytes'])})")
        rows = [["layer", "type", "srclayers", "output shape", "params"]]
        for r in ph["layers"]:
            rows.append([r["name"], r["type"], ",".join(r["srclayers"]) or "-",
                         _shape(r["shape"]), _params_cell(r["params"])])
        out += _table(rows)
        if ph["inserted"]:
            out.append("  (inserted by the net builder: " + ", ".join(ph["inserted"]) + ")")
    if d.get("partitions"):
        out += _render_partitions(d["partitions"])
    out.append("")
    main: dict[str, Any] = d["phases"].get("train") or next(iter(d["phases"].values()), {})
    nots = main.get("not_set_up", 0)
    out.append(f"params: {d['params']['count']:,} ({_mb(d['params']['bytes'])} as float32"
               + (f"; the {nots} layer(s) with shape ? are not counted" if nots else "") + ")")
    alg = d["algorithm"]
    out.append(f"algorithm: {alg['alg']}" + (f" (cd_k {alg['cd_k']})" if "cd_k" in alg else "")
               + f", train_steps {d['train_steps']}")
    u = d["updater"]
    if u is None:
        out.append("updater: none (this job only tests)")
    else:
        line = (f"updater: {u['type']}, momentum {u['momentum']:g}, "
                f"weight_decay {u['weight_decay']:g}")
        if "clip" in u:
            line += f", gradients clipped to [{u['clip'][0]:g}, {u['clip'][1]:g}]"
        out.append(line)
        out.append(f"  learning rate: {u['learning_rate']['schedule']}")
    t = d["triggers"]
    trig = []
    if "display" in t:
        trig.append(f"display every {t['display']['every']} steps"
                    + (f" from step {t['display']['after']}" if t["display"]["after"] else ""))
    for k in ("test", "validation"):
        if k in t:
            e = t[k]
            if not e["every"]:  # only the final pass (worker.run)
                trig.append(f"{k} at step {e['final_step']} x {e['steps']} batches")
                continue
            trig.append(f"{k} every {e['every']} steps x {e['steps']} batches"
                        + (f" from step {e['after']}" if e["after"] else "")
                        + (f" and at step {e['final_step']}" if "final_step" in e else ""))
    ck = t.get("checkpoint")
    if ck is None:
        trig.append(f"one test pass of {t['test_only']['steps']} batches (singa test)")
    elif "every" in ck:
        trig.append(f"checkpoint every {ck['every']} steps"
                    + (f" from step {ck['after']}" if ck["after"] else "")
                    + f" and at step {ck['final_step']}")
    else:
        trig.append(f"checkpoint at step {ck['final_step']}")
    out.append("triggers: " + "; ".join(trig))
    if d["params_loaded_from"]:
        out.append("params loaded from: " + ", ".join(d["params_loaded_from"]))
    c = d["cluster"]
    out.append(f"cluster: {c['nworker_groups']} worker group(s) x {c['nworkers_per_group']} "
               f"worker(s), {c['nserver_groups']} server group(s) x {c['nservers_per_group']} "
               "server(s); servers "
               + ("in separate processes" if c["server_worker_separate"]
                  else "in the worker processes"))
    out.append(f"  {c['nprocs']} process(es): {c['nworker_procs']} with workers "
               f"({c['nworkers_per_procs']} per process), {c['nserver_procs']} with servers "
               f"({c['nservers_per_procs']} per process)")
    procs = c["procs"]
    shown = procs if len(procs) < MAX_PROCS_SHOWN else procs[:MAX_PROCS_SHOWN // 2]
    for e in shown:
        w = " ".join(f"(g{g},w{i})" for g, i in e["workers"]) or "none"
        s = " ".join(f"(g{g},s{i})" for g, i in e["servers"]) or "none"
        out.append(f"  procs {e['procs']}: workers {w}; servers {s}")
    if len(shown) < len(procs):
        out.append(f"  ... {len(procs) - len(shown)} more (see --json)")
    mem = d.get("memory")
    if mem:
        from runtime.config.memory import human

        big = max(mem["procs"], key=lambda m: m["total"])
        parts = ", ".join(f"{k.replace('_', ' ')} {human(big[k])}" for k in
                          ("params", "grads", "updater_history", "activations", "server_slices",
                           "checkpoint", "runtime") if big[k])
        which = (f"largest of {len(mem['procs'])} processes, procs {big['procs']}"
                 if len(mem["procs"]) > 1 else f"procs {big['procs']}")
        out.append(f"memory (estimate, {which}): about {human(big['total'])} ({parts}); "
                   f"{mem['host']} has {human(mem['host_bytes'])}")
    if d["paths"]:
        out.append("paths (a relative one from the working directory, else from the "
                   "conf's directory):")
        for e in d["paths"]:
            name = f"layer '{e['layer']}' {e['field']}" if e["layer"] else e["field"]
            out.append(f"  {name}: {e['path']}" + ("  (not found)" if e["missing"] else ""))
    ws = d["workspace"]
    out.append(f"workspace: {ws['path']}"
               + (" (cluster.workspace is not set: this default is created)" if ws["default"]
                  else ""))
    if d["warnings"]:
        out.append("")
        out.append(f"{len(d['warnings'])} warning(s):")
        out += [f"  {w}" for w in d["warnings"]]
    return "\n".join(out)
