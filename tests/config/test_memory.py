"""runtime.config.memory: each process's estimated memory, by hand on small
nets, against a real run's peak RSS, and checked against the host's memory
by validate (an error over it, a warning over half)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import load_job, memory
from runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
F = 4  # float32

NET = """name: "small"
train_steps: 10
train_one_batch { alg: kBP }
updater { type: kSGD momentum: 0.9 learning_rate { type: kFixed base_lr: 0.1 } }
neuralnet {
  layer { name: "data" type: kDummy dummy_conf { input: true shape: 8 shape: 4 } }
  layer { name: "label" type: kDummy dummy_conf { input: true shape: 8 shape: 6 } }
  layer { name: "fc" type: kInnerProduct srclayers: "data" innerproduct_conf { num_output: 6 }
          param { name: "w" init { type: kGaussian std: 0.1 } }
          param { name: "b" init { type: kConstant } } }
  layer { name: "loss" type: kEuclideanLoss srclayers: "fc" srclayers: "label" }
}
"""
PARAMS = 6 * 4 + 6          # fc's w (6x4) and b (6)
OUTPUTS = 8 * 4 + 8 * 6 + 8 * 6 + 8 * 6  # data, label, fc, loss: one batch of 8


def load(tmp_path, text: str):
    p = tmp_path / "job.conf"
    p.write_text(text)
    return load_job(str(p))


def test_single_process_estimate_is_the_hand_computation(tmp_path):
    job = load(tmp_path, NET)
    [m] = job.validation.memory
    assert m.parts() == {
        "params": F * PARAMS, "grads": F * PARAMS,
        "updater_history": F * PARAMS,              # kSGD with momentum: one slot
        "activations": 2 * F * OUTPUTS,             # outputs and their gradients
        "server_slices": 0,                         # the LocalServer updates in place
        "checkpoint": memory.CHECKPOINT_COPIES * F * PARAMS,
        "runtime": memory.RUNTIME_BYTES}
    assert m.total == sum(m.parts().values())


def test_adam_keeps_two_slots_and_test_net_outputs_count(tmp_path):
    text = (NET.replace("type: kSGD momentum: 0.9", "type: kAdam")
            .replace("train_steps: 10", "train_steps: 10\ntest_steps: 2\ntest_freq: 5"))
    [m] = load(tmp_path, text).validation.memory
    assert m.history == 2 * F * PARAMS
    # the test net runs forward only: its outputs, no gradients
    assert m.activations == 2 * F * OUTPUTS + F * OUTPUTS


def test_servers_hold_their_slices_and_history(tmp_path):
    text = NET + ("cluster { nworker_groups: 2 server_worker_separate: true "
                  "nservers_per_group: 2 }\n# singa: lr scaled for 2 groups\n")
    procs = load(tmp_path, text).validation.memory
    assert [(m.workers, m.servers) for m in procs] == [
        ([(0, 0)], []), ([(1, 0)], []), ([], [(0, 0)]), ([], [(0, 1)])]
    w0, w1, s0, s1 = procs
    for w in (w0, w1):  # workers: values, grads, outputs; no updater here
        assert (w.params, w.grads, w.history, w.server_slices) == (F * PARAMS, F * PARAMS, 0, 0)
        assert w.activations == 2 * F * OUTPUTS
    assert w0.checkpoint == memory.CHECKPOINT_COPIES * F * PARAMS and w1.checkpoint == 0
    # the two servers split the params: values + gradient accumulator, and momentum
    assert s0.server_slices + s1.server_slices == 2 * F * PARAMS
    assert s0.history + s1.history == F * PARAMS
    assert s0.server_slices > 0 and s1.server_slices > 0
    assert s0.params == s0.grads == s0.activations == 0


def test_over_the_host_memory_is_an_error_at_the_layer_over_half_a_warning(tmp_path,
                                                                           monkeypatch):
    job = load(tmp_path, NET)
    need = job.validation.memory[0].total
    conf = str(tmp_path / "job.conf")
    fc_at = f"{conf}:{NET.splitlines().index(next(l for l in NET.splitlines() if 'fc' in l)) + 1}:3"
    monkeypatch.setattr(memory, "host_memory", lambda: ("testhost", need - 1))
    with pytest.raises(ConfigError) as e:
        load_job(conf)
    [p] = e.value.problems
    assert p.where == fc_at
    assert p.message.startswith(f"layer 'fc' (kInnerProduct): process 0 (worker (0,0), "
                                f"server (0,0)) needs about {memory.human(need)} (params ")
    assert f"more than the {memory.human(need - 1)} of memory of testhost" in p.message
    monkeypatch.setattr(memory, "host_memory", lambda: ("testhost", 2 * need - 1))
    [w] = load_job(conf).warnings
    assert w.where == fc_at and "more than half of the" in w.message
    monkeypatch.setattr(memory, "host_memory", lambda: ("testhost", 2 * need))
    assert load_job(conf).warnings == []


def test_estimate_is_of_the_order_of_a_real_run(tmp_path):
    """A worker process trained for real: its peak RSS and the estimate agree
    within a factor of two (see the module docstring for what is left out)."""
    text = (NET.replace("shape: 8 shape: 4", "shape: 64 shape: 1000")
            .replace("shape: 8 shape: 6", "shape: 64 shape: 2000")
            .replace("num_output: 6", "num_output: 2000")
            + f'cluster {{ workspace: "{tmp_path / "ws"}" }}\n')
    (tmp_path / "job.conf").write_text(text)
    script = ("import json, resource, sys\n"
              "from runtime.config import load_job\n"
              "from runtime.train import single\n"
              "job = load_job(sys.argv[1])\n"
              "est = job.validation.memory[0].total\n"
              "single.train(job.proto)\n"
              "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
              "print(json.dumps([est, peak]))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "job.conf")], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    est, peak = json.loads(r.stdout.strip().splitlines()[-1])
    assert est > 8 * 2000 * 1000 * F  # the params and what goes with them dominate
    assert peak / 2 <= est <= 2 * peak, (est, peak)
