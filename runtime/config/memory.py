"""How much memory each process of a job needs, checked against its host's.

`estimate(job, nets, partitioned)` adds up, per process of the cluster plan
(`runtime.cluster.Cluster.plan`), the float32 arrays the runtime keeps for a
whole run, from the shapes the validation nets inferred:

- for each worker in the process (its partition of the training net, the
  layers with `partition_id == w`; the one-partition net for one worker per
  group):
  - params: the values of its params, counted once per process for the
    replicas that share them (the workers of a group share the lowest worker
    id's values; with `cluster.share_memory` the groups of a process share
    one copy too, as `runtime.ps.stub.Stub.link` does);
  - grads: one gradient per param of every worker (share_from params
    included: each reports its own; not the unrolled copies, which add into
    copy 0's);
  - activations: every layer's output and its gradient for one batch; the
    group's first worker also runs the test and validation nets the job uses
    (outputs only: no backward pass; their params are the training net's);
  - updater history, for a job of one process, one worker and one server
    (`runtime.train.node.run_single`: the LocalServer applies the updater in the
    worker's process): `len(updater.slots)` arrays per owned param (momentum
    for kSGD with momentum, one for kNesterov/kAdaGrad/kRMSProp, two for
    kAdaDelta/kAdam/kAdamMax; a user updater's own `slots`);
- for each server in the process (`runtime.ps.server.Server`): its param slices
  (`runtime.ps.param_slice.SlicePlan.slices_on`), each with its values, the
  gradient accumulator of a round, the updater's history slots, and with
  several server groups the copy last synced with the master group;
- checkpoint: worker (0, 0) writes the group's params (at the last step at
  least), and `runtime.checkpoint.encode` holds `CHECKPOINT_COPIES` copies
  of their bytes at that moment;
- a fixed `RUNTIME_BYTES` for the interpreter, numpy, OpenBLAS, pyzmq,
  protobuf and singa's modules (about 40 MiB measured after import, plus
  OpenBLAS's thread buffers).

Not counted: data files an input layer reads into memory, an updater's
scratch arrays, the whole copy of a feature-partitioned param that a group's
first worker assembles, messages in flight and transient copies while params
are initialised; `RUNTIME_BYTES` is rounded up. The estimate is of the
order of the peak RSS, within a factor of two (examples/mnist/job.conf:
about 350 MiB estimated for its one process, 410 MiB peak RSS measured over
5 steps and the final checkpoint).

`check(...)` compares each process with the memory of its host: more than it
is an error, more than half a warning (the host runs other things, and the
peak may be above the estimate). The host's memory is `host_memory()`, this
host's total (`psutil.virtual_memory().total`). validate runs on the
submitting host and does not know the memory of the remote hosts of a
hostfile, so every process is checked against this host's memory: a
cluster whose hosts differ from the submitting one is checked as if they
were alike.
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conf import job_pb2
from runtime.cluster import Cluster
from runtime.errors import Problem
from runtime.units import human_bytes as human

F32 = 4
RUNTIME_BYTES = 64 * 2 ** 20
# runtime.checkpoint.encode holds the blobs, their join and the file's bytes at once
CHECKPOINT_COPIES = 3
SIDE_PHASES = ((job_pb2.kTest, "test_steps"), (job_pb2.kVal, "validate_steps"))


@dataclass
class ProcessMemory:
    """The estimated bytes of one process, by what holds them."""

    procs: int
    workers: list[tuple[int, int]]
    servers: list[tuple[int, int]]
    params: int = 0
    grads: int = 0
    history: int = 0
    activations: int = 0
    server_slices: int = 0
    checkpoint: int = 0
    runtime: int = RUNTIME_BYTES
    # conf layer name -> bytes this process holds for it (all of the above but runtime)
    by_layer: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def total(self) -> int:
        return (self.params + self.grads + self.history + self.activations
                + self.server_slices + self.checkpoint + self.runtime)

    def parts(self) -> dict[str, int]:
        return {"params": self.params, "grads": self.grads, "updater_history": self.history,
                "activations": self.activations, "server_slices": self.server_slices,
                "checkpoint": self.checkpoint, "runtime": self.runtime}

    def as_dict(self) -> dict[str, Any]:
        return {"procs": self.procs, "workers": [list(w) for w in self.workers],
                "servers": [list(s) for s in self.servers], **self.parts(), "total": self.total}


def host_memory() -> tuple[str, int]:
    """(name, total bytes of memory) of this host."""
    import psutil  # only validate needs it

    return socket.gethostname() or "localhost", int(psutil.virtual_memory().total)


def updater_slots(updater: job_pb2.UpdaterProto) -> int:
    """History arrays per param of the job's updater (0 if it cannot be built,
    e.g. an unregistered user updater, reported elsewhere)."""
    try:
        from runtime.model.updater import create_updater

        return len(getattr(create_updater(updater), "slots", ()) or ())
    except Exception:  # noqa: BLE001 - the updater's own problems are validate's to report
        return 0


def _size(shape) -> int:
    """Elements of an array of `shape`; 0 for a layer whose shape is not known."""
    if shape is None:
        return 0
    n = 1
    for d in shape:
        n *= int(d)
    return n


def estimate(job: job_pb2.JobProto, nets: dict[int, Any], partitioned: Any = None,
             slots: int | None = None) -> list[ProcessMemory]:
    """ProcessMemory of every process of the plan (see the module docstring);
    [] when the training net was not built. `nets`: phase -> one-partition
    NeuralNet (shapes only); `partitioned`: the training net over
    nworkers_per_group partitions, or None."""
    from runtime.neuralnet.partition import whole_name
    from runtime.neuralnet.unroll import origin_name
    from runtime.ps.param_slice import SlicePlan

    train = nets.get(job_pb2.kTrain)
    if train is None:
        return []
    c = Cluster.from_proto(job.cluster)
    if c.problems():
        return []
    group_net = partitioned if partitioned is not None else train
    slots = updater_slots(job.updater) if slots is None else slots
    single = c.nprocs == 1 and c.nworkers == 1 and c.nservers == 1

    def conf_name(layer) -> str:
        return origin_name(whole_name(layer.name))

    def worker_layers(w: int) -> list:
        if partitioned is None:
            return list(train.layers)
        return [l for l in partitioned.layers if l.proto.partition_id == w]

    side = [nets[ph] for ph, steps in SIDE_PHASES if getattr(job, steps) > 0 and ph in nets]
    served = group_net.group_params()
    held = {id(p) for p in served}
    plan = SlicePlan([(p.name, p.size) for p in served], c)
    # the conf layer owning each served param, to say which layer the servers' memory is for
    owner_layer: dict[str, str] = {}
    for l in group_net.layers:
        for p in l.params:
            owner_layer.setdefault(p.name, conf_name(l))
    server_arrays = 2 + slots + (1 if c.nserver_groups > 1 else 0)

    out = []
    for e in c.plan():
        m = ProcessMemory(e["procs"], list(e["workers"]), list(e["servers"]))
        seen: set[tuple[int, str]] = set()

        def add(layer: str, what: str, nbytes: int, m: ProcessMemory = m) -> None:
            setattr(m, what, getattr(m, what) + nbytes)
            m.by_layer[layer] = m.by_layer.get(layer, 0) + nbytes

        for g, w in m.workers:
            for l in worker_layers(w):
                name = conf_name(l)
                add(name, "activations", 2 * F32 * _size(l.shape))
                for p in l.params:
                    # an unrolled copy adds its gradient into copy 0's (NeuralNet kAggGrad)
                    if p.owner is None or p.owner.name == p.name or \
                            origin_name(p.name) != origin_name(p.owner.name):
                        add(name, "grads", F32 * p.size)
                    # a replica on another worker has its owner's name; a share_from
                    # param or an unrolled copy uses its owner's values
                    if id(p) not in held and (p.owner is None or p.owner.name != p.name):
                        continue
                    key = (0 if c.share_memory else g, p.name)
                    if key not in seen:
                        seen.add(key)
                        add(name, "params", F32 * p.size)
                        if single:
                            add(name, "history", slots * F32 * p.size)
            if (g, w) == (0, 0) and job.train_steps > 0:
                for p in served:
                    add(owner_layer[p.name], "checkpoint", CHECKPOINT_COPIES * F32 * p.size)
            if w == 0:
                for net in side:
                    for l in net.layers:
                        add(conf_name(l), "activations", F32 * _size(l.shape))
        for _, s in ([] if single else m.servers):  # single: the LocalServer, counted above
            for sl in plan.slices_on(s):
                layer = owner_layer.get(plan.names[sl.param], "?")
                add(layer, "server_slices", (server_arrays - slots) * F32 * sl.size)
                add(layer, "history", slots * F32 * sl.size)
        out.append(m)
    return out


def check(job: job_pb2.JobProto, nets: dict[int, Any], partitioned: Any,
          layer_where: Callable[[str], str], *, host: tuple[str, int] | None = None
          ) -> tuple[list[ProcessMemory], list[Problem]]:
    """The estimate and its problems: the largest process over its host's
    memory is an error, over half of it a warning, at the conf layer that
    needs the most memory in it (`layer_where(name)` locates it)."""
    procs = estimate(job, nets, partitioned)
    if not procs:
        return procs, []
    hostname, avail = host or host_memory()
    big = max(procs, key=lambda m: m.total)
    if big.total <= avail / 2:
        return procs, []
    layer = max(big.by_layer, key=big.by_layer.__getitem__)
    ltype = _layer_type(job, layer)
    who = ", ".join([f"worker ({g},{w})" for g, w in big.workers]
                    + [f"server ({g},{s})" for g, s in big.servers])
    parts = ", ".join(f"{k.replace('_', ' ')} {human(v)}" for k, v in big.parts().items() if v)
    more = "more than" if big.total > avail else "more than half of"
    msg = (f"layer '{layer}' ({ltype}): process {big.procs} ({who}) needs about "
           f"{human(big.total)} ({parts}), {more} the {human(avail)} of memory of {hostname}"
           f"; layer '{layer}' accounts for {human(big.by_layer[layer])} of it")
    sev = "error" if big.total > avail else "warning"
    return procs, [Problem(layer_where(layer), msg, sev)]


def _layer_type(job: job_pb2.JobProto, name: str) -> str:
    for l in job.neuralnet.layer:
        if l.name == name:
            return l.user_type or job_pb2.LayerType.Name(l.type)
    return "?"
