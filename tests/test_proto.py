"""The schema: committed generated modules are fresh, and the protos keep
SINGA v0.3's names, numbers, labels and defaults (Appendix A of the
reference), so a v0.3 job.conf parses unchanged."""
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from conf import common_pb2, job_pb2, singa_pb2

CONF = Path(__file__).resolve().parents[1] / "conf"
PROTOS = ["job.proto", "common.proto", "singa.proto"]


def test_generated_modules_are_not_stale(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is installed by bin/setup ('.[test]')")
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{CONF}",
                        f"--python_out={tmp_path}", *[str(CONF / p) for p in PROTOS]],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for p in PROTOS:
        mod = p.replace(".proto", "_pb2.py")
        assert (tmp_path / mod).read_text() == (CONF / mod).read_text(), (
            f"conf/{mod} is stale: regenerate with "
            "python -m grpc_tools.protoc -Iconf --python_out=conf conf/*.proto")


def field(msg, name):
    return msg.DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize("msg,name,number,label,default", [
    (job_pb2.JobProto, "train_steps", 16, "optional", 0),
    (job_pb2.JobProto, "checkpoint_path", 60, "repeated", None),
    (job_pb2.JobProto, "reset_param_version", 63, "optional", True),
    (job_pb2.JobProto, "id", 92, "optional", -1),
    (job_pb2.AlgProto, "alg", 1, "optional", job_pb2.kUserAlg),
    (job_pb2.NetProto, "unroll_len", 22, "optional", 1),
    (job_pb2.UpdaterProto, "type", 1, "optional", job_pb2.kUserUpdater),
    (job_pb2.UpdaterProto, "delta", 35, "optional", pytest.approx(1e-8)),
    (job_pb2.ClusterProto, "start_port", 60, "optional", 6723),
    (job_pb2.ClusterProto, "share_memory", 62, "optional", True),
    (job_pb2.LayerProto, "name", 1, "required", ""),
    (job_pb2.LayerProto, "partition_dim", 60, "optional", -1),
    (job_pb2.LayerProto, "rnn_dummy_conf", 505, "optional", None),
    (job_pb2.ParamProto, "owner", 91, "optional", -1),
    (job_pb2.LRGenProto, "inverset_conf", 45, "optional", None),
    (job_pb2.ParamGenProto, "high", 9, "optional", 1.0),
    (job_pb2.StoreProto, "batchsize", 8, "repeated", None),
    (job_pb2.PoolingProto, "stride", 32, "optional", 2),
    (job_pb2.LRNProto, "local_size", 1, "required", 5),
    (job_pb2.StepProto, "change_freq", 40, "required", 0),
    (job_pb2.AdamProto, "beta2", 2, "required", pytest.approx(0.999)),
    (common_pb2.BlobProtos, "blob", 5, "repeated", None),
    (common_pb2.RecordProto, "data", 4, "repeated", None),
    (singa_pb2.SingaProto, "log_dir", 2, "optional", "/tmp/singa-log/"),
])
def test_fields_match_singa_v03(msg, name, number, label, default):
    f = field(msg, name)
    assert f.number == number
    actual = "repeated" if f.is_repeated else "required" if f.is_required else "optional"
    assert actual == label
    if default is not None:
        assert f.default_value == default


def test_enum_values_match_singa_v03():
    assert job_pb2.kInnerProduct == 205 and job_pb2.kUserLayer == 600 and job_pb2.kRNNDummy == 505
    assert job_pb2.kCudnnBM == 255 and job_pb2.kCSVInput == 100 and job_pb2.kShardData == 194
    assert (job_pb2.kBP, job_pb2.kCD, job_pb2.kBPTT, job_pb2.kUserAlg) == (1, 2, 3, 104)
    assert (job_pb2.kTrain, job_pb2.kVal, job_pb2.kTest, job_pb2.kAggGrad) == (1, 2, 4, 512)
    assert (job_pb2.kFixedStep, job_pb2.kUserChange) == (6, 100)
    assert (job_pb2.kUniformSqrtFanInOut, job_pb2.kUserInit) == (6, 101)
    assert job_pb2.PoolingProto.AVG == 1 and job_pb2.STANH == 4
    assert (common_pb2.kRUpdate, common_pb2.kMetric, common_pb2.kRuntime) == (9, 11, 4)
    assert len(job_pb2.LayerType.values()) == 50


def test_extension_ranges_match_singa_v03():
    ranges = {m.DESCRIPTOR.name: list(m.DESCRIPTOR.extension_ranges) for m in
              (job_pb2.JobProto, job_pb2.LayerProto, job_pb2.UpdaterProto, job_pb2.ParamProto)}
    assert ranges["JobProto"] == [(101, 201)]
    assert ranges["LayerProto"] == [(1001, 1101)]
    assert ranges["UpdaterProto"] == [(101, 201)]


def test_singa_text_conventions_parse():
    text = """
    # a comment
    name: "x";
    cluster: { nworker_groups: 2; workspace: "w" }
    neuralnet { layer: { name: "a" type: kInnerProduct; innerproduct_conf { num_output: 3 } } }
    """
    job = text_format.Parse(text, job_pb2.JobProto())
    assert job.cluster.nworker_groups == 2 and job.neuralnet.layer[0].innerproduct_conf.num_output == 3
