"""Parsing job.conf text: SINGA's conventions, syntax errors as PATH:LINE:COL, the Locator."""
from __future__ import annotations

import pytest

from conf import job_pb2
from runtime.config import parse_text
from runtime.config.locate import Locator
from runtime.config.parse import unknown_extensions
from runtime.errors import ConfigError

SINGA_STYLE = """# a comment line
name: "mlp"   # a trailing comment
train_steps: 1000;
train_one_batch {
  alg: kBP
}
updater{
  type: kSGD
  learning_rate: {
    type : kStep
    base_lr: 0.001
    step_conf{ change_freq: 60; gamma: 0.997 }
  }
}
neuralnet {
  layer: {
    name: "data"; type: kRecordInput
    store_conf { backend: "kvfile" path: "x.bin" batchsize: 64 shape: 784 }
    include: kTrain
  };
  layer < name: "fc1" type: kInnerProduct srclayers: "data" srclayers: ["a", "b"] >
}
"""


def test_singa_text_conventions_parse():
    job, loc = parse_text(SINGA_STYLE, "job.conf")
    assert job.name == "mlp" and job.train_steps == 1000
    assert job.train_one_batch.alg == job_pb2.kBP
    assert job.updater.learning_rate.step_conf.change_freq == 60
    assert [l.name for l in job.neuralnet.layer] == ["data", "fc1"]
    assert list(job.neuralnet.layer[1].srclayers) == ["data", "a", "b"]
    assert list(job.neuralnet.layer[0].include) == [job_pb2.kTrain]


def test_locator_records_every_field_occurrence():
    _, loc = parse_text(SINGA_STYLE, "job.conf")
    assert loc.exact("name") == (2, 1)
    assert loc.exact("neuralnet.layer[0]") == (16, 3)
    assert loc.exact("neuralnet.layer[0].name") == (17, 5)
    assert loc.exact("neuralnet.layer[0].store_conf.batchsize") == (18, 50)
    assert loc.exact("neuralnet.layer[1].srclayers[0]") == (21, 43)
    assert loc.exact("neuralnet.layer[1].srclayers[2]") == (21, 78)  # an element of a [list]
    assert loc.exact("updater.learning_rate.step_conf.gamma") == (12, 33)
    assert loc.where("neuralnet.layer[1]") == "job.conf:21:3"


def test_locator_falls_back_to_the_nearest_written_ancestor():
    _, loc = parse_text(SINGA_STYLE, "job.conf")
    # not written: a missing required field is reported at its message
    assert loc.where("neuralnet.layer[1].innerproduct_conf.num_output") == "job.conf:21:3"
    assert loc.where("neuralnet.layer[1].param[3].name") == "job.conf:21:3"
    assert loc.where("cluster.workspace") == "job.conf"
    # the bare name of a repeated field is its first occurrence
    assert loc.where("neuralnet.layer") == "job.conf:16:3"


def test_locator_never_raises_on_odd_text():
    loc = Locator("neuralnet { layer { name: 'x' } } } } {", job_pb2.JobProto.DESCRIPTOR, "j")
    assert loc.exact("neuralnet.layer[0].name") == (1, 21)
    assert Locator("", job_pb2.JobProto.DESCRIPTOR).positions == {}


@pytest.mark.parametrize("text, where, message", [
    ('name: "x"\nneuralnet { layer { nam: "a" } }', "j.conf:2:21",
     "has no field named \"nam\"; did you mean 'name'?"),
    ("train_steps: abc", "j.conf:1:14", "Couldn't parse integer: abc"),
    ('neuralnet { layer { name: "a" }\n\n# end\n', "j.conf:1:31",
     'unexpected end of file: expected "}"'),
    ("train_steps: 1\ntrain_steps: 2", "j.conf:2:14", 'should not have multiple "train_steps"'),
    ("neuralnet { layer { type: kInnerProdct } }", "j.conf:1:27", "did you mean kInnerProduct?"),
    ("neuralnet { layer { type: kPrefetch } }", "j.conf:1:27", "store_conf { prefetching: true }"),
    ("updater { learning_rate { step_conf { freq: 10 } } }", "j.conf:1:39",
     "did you mean 'change_freq'? ('freq' is a name from SINGA's docs)"),
    ("neuralnet { layer { pooling_conf { pool: AVE } } }", "j.conf:1:42", "did you mean AVG?"),
    ('name: "abc', "j.conf:1:7", "String missing ending quote"),
])
def test_syntax_error_is_one_located_problem(text, where, message):
    with pytest.raises(ConfigError) as e:
        parse_text(text, "j.conf")
    (p,) = e.value.problems
    assert p.where == where
    assert message in p.message
    assert "'" + text.split("\n")[0] + "'" not in p.message  # the tokenizer's line echo is gone
    assert str(p) == f"{where}: {p.message}"


def test_the_parser_skips_an_unknown_extension_and_locates_it():
    job, loc = parse_text('neuralnet { layer { name: "a" [data_conf] { path: "x" } } }', "j")
    assert job.neuralnet.layer[0].name == "a"
    (w,) = unknown_extensions(loc)
    assert w.severity == "warning" and w.where == "j:1:31"
    assert "[data_conf]" in w.message
