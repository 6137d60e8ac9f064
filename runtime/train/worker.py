"""Worker: runs the training loop of one worker of one worker group.

As SINGA's `Worker::Run`, per step, in this order:
    validation (if due) -> test (if due) -> checkpoint (if due) -> TrainOneBatch -> display (if due)
and, at `train_steps`, a final validation and test (whenever
`validate_steps` / `test_steps` > 0) and a final checkpoint. Test,
validation and display are done by worker 0 of group 0 only; checkpoints by
group 0. Displayed metrics are averages over the batches since the last
display.

Subclasses are the TrainOneBatch algorithms (BP, CD, BPTT, user ones); they
register in `alg_registry` keyed by `AlgType` and define
`train_one_batch(step, net)` and `test_one_batch(step, phase, net)`.

The worker talks to its parameter service through a `ParamChannel`:
`put` (initial values), `update` (send a gradient), `collect` (wait for the
fresh values). In one process the channel applies updates at once; in the
distributed runtime it is the stub.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol

import numpy as np

from conf import job_pb2
from runtime import checkpoint
from runtime.errors import UserError
from runtime.model.param import Param
from runtime.neuralnet.layer import Layer
from runtime.neuralnet.net import NeuralNet
from runtime.registry import Registry
from runtime.train import debug
from runtime.train.divergence import check_metrics, check_param
from runtime.train.trigger import Trigger

alg_registry = Registry("algorithm", job_pb2.AlgType,
                        required=("train_one_batch", "test_one_batch"))


class ParamChannel(Protocol):
    def put(self, param: Param) -> None: ...
    def update(self, step: int, param: Param) -> None: ...
    def collect(self, param: Param) -> None: ...
    def state(self) -> dict[str, np.ndarray]: ...
    def load_state(self, state: dict[str, np.ndarray]) -> None: ...


def format_metrics(layer: Layer) -> str:
    """A loss layer's metrics as SINGA prints them ("Loss = 0.5, accuracy = 0.8")."""
    display = getattr(layer, "display", None)
    if callable(display):
        return display()
    return ", ".join(f"{k} = {v:f}" for k, v in layer.metrics().items())


class Worker:
    """One worker: builds its nets, initialises params, runs the loop.

    `job` is a validated JobProto with absolute paths. `log` receives each
    progress line (the CLI streams them). `seed` seeds the random generators
    (0 = fresh).
    """

    def __init__(self, job: job_pb2.JobProto, channel: ParamChannel, grp_id: int = 0,
                 worker_id: int = 0, log: Callable[[str], None] | None = None):
        self.job = job
        self.channel = channel
        self.grp_id = grp_id
        self.id = worker_id
        self.log = log or (lambda line: print(line, flush=True))
        seed = job.seed or None
        self.seed_seq = np.random.SeedSequence(seed)
        init_ss, train_ss, test_ss = self.seed_seq.spawn(3)
        self.init_rng = np.random.default_rng(init_ss)
        self.train_rng = np.random.default_rng(train_ss)
        self.test_rng = np.random.default_rng(test_ss)
        self._train_net: NeuralNet | None = None
        self.test_net: NeuralNet | None = None
        self.val_net: NeuralNet | None = None
        self.step = job.step
        self.metrics_log: list[dict] = []  # every displayed/tested metric, for callers and tests
        # called with each record too (the node sends it to the job master)
        self.on_report: Callable[[dict], None] | None = None

    # ------------------------------------------------------------ set up ---
    @property
    def train_net(self) -> NeuralNet:
        """The train net, made by `setup()` (or set by the caller, e.g. test mode)."""
        if self._train_net is None:
            raise RuntimeError("Worker.train_net is made by setup(); call it first")
        return self._train_net

    @train_net.setter
    def train_net(self, net: NeuralNet) -> None:
        self._train_net = net

    @property
    def is_first(self) -> bool:
        return self.grp_id == 0 and self.id == 0

    @property
    def displays(self) -> bool:
        """SINGA displays from group 0's first worker only; beyond SINGA the
        first worker of every group reports its train metrics when someone
        listens (`on_report`: the metrics stream, a curve per group)."""
        return self.is_first or (self.id == 0 and self.on_report is not None)

    @property
    def writes_checkpoints(self) -> bool:
        # SINGA: group 0 writes. The workers of a group hold replicas of the
        # same params (batch partitions), so its first worker writes them.
        return self.is_first

    def setup(self) -> None:
        net = self.job.neuralnet
        self.train_net = NeuralNet.create(net, job_pb2.kTrain)
        self.train_net.set_rng(self.train_rng)
        if self.job.debug:
            debug.watch(self.train_net)  # keeps each layer's gradient for the display step
        if self.is_first and self.job.test_steps > 0:
            self.test_net = self._side_net(job_pb2.kTest)
        if self.is_first and self.job.validate_steps > 0:
            self.val_net = self._side_net(job_pb2.kVal)

    def _side_net(self, phase: int) -> NeuralNet | None:
        n = NeuralNet.create(self.job.neuralnet, phase)
        n.share_params_from(self.train_net)
        n.set_rng(self.test_rng)
        return n

    def owned_params(self) -> list[Param]:
        return [p for p in self.train_net.params if p.owner is None]

    def init_params(self, resume_state: dict | None = None) -> None:
        """Load params from `checkpoint_path` (by name), initialise the rest,
        and hand them to the parameter service (SINGA's InitNetParams)."""
        loaded = checkpoint.load(list(self.job.checkpoint_path)) if self.job.checkpoint_path else {}
        needs_init = getattr(self.channel, "needs_init", lambda p: True)
        missing = [p.name for p in self.owned_params() if needs_init(p) and p.name not in loaded]
        if self.job.checkpoint_path and missing:
            # SINGA initialises them silently; testing a net half from random
            # params is rarely what the user meant (char-rnn's sample.conf)
            self.log(f"Warning: no values for params {', '.join(repr(n) for n in missing)} in "
                     f"checkpoint_path ({', '.join(self.job.checkpoint_path)}): they start "
                     "from their init methods")
        for p in self.owned_params():
            if not needs_init(p):
                p.allocate()  # the values come from the parameter service
                p.version = self.job.step
            elif p.name in loaded:
                version, values = loaded[p.name]
                if tuple(values.shape) != p.shape and values.size == p.size:
                    values = values.reshape(p.shape)
                if tuple(values.shape) != p.shape:
                    raise UserError(
                        f"checkpoint param '{p.name}' has shape {list(values.shape)}, "
                        f"the net expects {list(p.shape)}")
                p.allocate()
                assert p.data is not None  # allocate() made it
                p.data[...] = values
                p.version = self.job.step if self.job.reset_param_version else version
            else:
                p.init_values(self.init_rng, version=self.job.step)
        if resume_state is not None:
            self._load_resume_state(resume_state)
        for p in self.owned_params():
            self.channel.put(p)

    # ------------------------------------------------------------- loop ---
    def run(self) -> None:
        job = self.job
        validate_now = Trigger(job.validate_freq, job.validate_after)
        test_now = Trigger(job.test_freq, job.test_after)
        checkpoint_now = checkpoint.due(job)  # the servers save theirs at the same steps
        display_now = Trigger(job.disp_freq, job.disp_after)
        step = self.step
        while step < job.train_steps:
            if validate_now(step) and self.val_net is not None and job.validate_steps > 0:
                self.test(step, job.validate_steps, job_pb2.kVal, self.val_net, "Validation")
            if test_now(step) and self.test_net is not None and job.test_steps > 0:
                self.test(step, job.test_steps, job_pb2.kTest, self.test_net, "Test")
            if checkpoint_now(step):
                self.checkpoint(step)
            self.train_one_batch(step, self.train_net)
            self.step = step  # read by the heartbeat thread
            # every worker checks its own losses, displayed or not: a group
            # that diverges fails at the step it did, not at the next display
            check_metrics(self.train_net, step)
            if job.debug and self.grp_id == 0 and display_now(step):
                # SINGA's debug: per-layer norms of data, grads and params
                debug.write(self.train_net, step, job.cluster.workspace, group=self.grp_id,
                            worker=self.id)
            if display_now(step) and self.displays:
                self.display(step)
            step += 1
        self.step = step
        # the last updates are applied before this worker reports done
        for p in self.owned_params():
            self.channel.collect(p)
            # the last update is checked by no later loss: no non-finite
            # params in the final checkpoint of a job that succeeds
            if p.data is not None:
                check_param(p.name, step, p.data)
        # Beyond SINGA: a job with test_steps > 0 (validate_steps > 0) always
        # ends with a test (validation) of its final params at train_steps,
        # even when train_steps is not a multiple of test_freq; the loop
        # above stops before train_steps, so it never runs twice.
        if self.val_net is not None and job.validate_steps > 0:
            self.test(step, job.validate_steps, job_pb2.kVal, self.val_net, "Validation")
        if self.test_net is not None and job.test_steps > 0:
            self.test(step, job.test_steps, job_pb2.kTest, self.test_net, "Test")
        self.checkpoint(step)
        self.close()

    def test(self, step: int, nsteps: int, phase: int, net: NeuralNet, prefix: str) -> dict:
        for p in self.owned_params():
            self.channel.collect(p)
        for layer in net.layers:
            layer.reset_metrics()
        for _ in range(nsteps):
            self.test_one_batch(step, phase, net)
        check_metrics(net, step, prefix.lower())
        return self._report(f"{prefix} @ step {step}", step, prefix.lower(), net)

    def display(self, step: int) -> dict:
        return self._report(f"Train @ step {step}", step, "train", self.train_net)

    def _report(self, prefix: str, step: int, phase: str, net: NeuralNet) -> dict:
        parts, values = [], {}
        for layer in net.layers:
            m = layer.metrics()
            if m:
                parts.append(format_metrics(layer))
                values.update(m)
            layer.reset_metrics()
        if parts:
            self.log(f"{prefix}  " + ", ".join(parts))
        rec = {"step": step, "phase": phase, **values}
        self.metrics_log.append(rec)
        if self.on_report is not None:
            self.on_report(rec)
        return rec

    # ------------------------------------------------------- checkpoints ---
    def checkpoint(self, step: int) -> None:
        """Group 0's first worker writes the params and its resume state; the
        other workers of group 0 their own resume state (data position,
        random state), so that a resumed group reads on where it stopped."""
        ws = self.job.cluster.workspace
        if not self.writes_checkpoints:
            if self.grp_id == 0:
                checkpoint.save_resume(checkpoint.position_path(ws, step, self.id),
                                       self._resume_state(step))
            return
        for p in self.owned_params():
            self.channel.collect(p)
        params = []
        for p in self.owned_params():
            assert p.data is not None  # owned params are allocated by init_params
            params.append((p.name, p.version, p.data))
        checkpoint.save(ws, step, self.id, params, self._resume_state(step))
        self.job.step = step

    def _resume_state(self, step: int) -> dict:
        layers = {l.name: l.state() for l in self.train_net.layers if l.state()}
        meta = {"step": step, "train_rng": self.train_rng.bit_generator.state,
                "test_rng": self.test_rng.bit_generator.state, "layers": layers}
        return {"meta": _jsonable(meta), "arrays": self.channel.state()}

    def _load_resume_state(self, state: dict) -> None:
        meta = state["meta"]
        self.train_rng.bit_generator.state = meta["train_rng"]
        self.test_rng.bit_generator.state = meta["test_rng"]
        for l in self.train_net.layers:
            if l.name in meta.get("layers", {}):
                l.load_state(meta["layers"][l.name])
        self.channel.load_state(state["arrays"])

    # -------------------------------------------------------- algorithm ---
    def train_one_batch(self, step: int, net: NeuralNet) -> None:
        raise NotImplementedError

    def test_one_batch(self, step: int, phase: int, net: NeuralNet) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for net in (self.train_net, self.test_net, self.val_net):
            if net is not None:
                net.close()


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def log_to_stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
