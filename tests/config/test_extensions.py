"""A user's own .proto extending the job schema: compiled, loaded, parsed
and validated; shipped with a job as its generated module; unknown
extensions are located errors."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conf import job_pb2
from runtime import plugins
from runtime.config import load_job
from runtime.config.extensions import compile_proto, extensions_of, load_proto
from runtime.errors import ConfigError, UserError

# Numbers apart from the examples' (rnnlm.proto takes 1001-1002): every test
# of a session shares protobuf's one descriptor pool, where numbers are unique.
XP_PROTO = """\
syntax = "proto2";
package xp;
import "job.proto";

message ScaleProto {
  required float factor = 1;
  optional string note = 2 [default = "none"];
}
message RunProto {
  optional int32 tag = 1;
}
extend singa.LayerProto {
  optional ScaleProto scale_conf = 1090;
}
extend singa.JobProto {
  optional RunProto run_conf = 190;
}
extend singa.UpdaterProto {
  optional float xp_gamma = 190;
}
"""

# A user layer that reads its own config block: the job fails in any
# process where the block did not parse (setup raises).
SCALE_LAYER = '''
import xp_pb2
from runtime.errors import LayerError
from runtime.neuralnet.layer import Layer
from runtime.plugins import register_layer


@register_layer("XpScale")
class Scale(Layer):
    def setup(self, srclayers):
        super().setup(srclayers)
        if not self.proto.HasExtension(xp_pb2.scale_conf):
            raise LayerError("no [xp.scale_conf] block")
        self.factor = self.proto.Extensions[xp_pb2.scale_conf].factor

    def compute_feature(self, flag, srclayers):
        self.data = self.factor * srclayers[0].data_for(self)

    def compute_gradient(self, flag, srclayers):
        srclayers[0].set_grad(self, self.factor * self.grad)
'''

HEAD = """name: "t"
train_steps: 10
train_one_batch { alg: kBP }
updater { type: kSGD learning_rate { type: kFixed base_lr: 0.1 } }
"""
DATA = 'layer { name: "data" type: kDummy dummy_conf { input: true shape: 4 shape: 3 } }\n'


@pytest.fixture(scope="module")
def xp_proto(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("xp")
    (d / "xp.proto").write_text(XP_PROTO)
    return d / "xp.proto"


@pytest.fixture(scope="module")
def xp(xp_proto):
    return load_proto(xp_proto)


def write(tmp_path: Path, body: str) -> str:
    p = tmp_path / "job.conf"
    p.write_text(body)
    return str(p)


def at(body: str, needle: str) -> str:
    k = body.index(needle)
    return f":{body.count(chr(10), 0, k) + 1}:{k - (body.rfind(chr(10), 0, k) + 1) + 1}: "


def test_extension_blocks_parse_and_validate(xp, tmp_path):
    body = (HEAD.replace("base_lr: 0.1 }", "base_lr: 0.1 } [xp.xp_gamma]: 0.5")
            + "[xp.run_conf] { tag: 7 }\n"
            + "neuralnet {\n" + DATA
            + 'layer { name: "s" type: kDummy srclayers: "data" [xp.scale_conf] { factor: 2.5 } }\n'
            + "}\n")
    job = load_job(write(tmp_path, body)).proto
    assert job.Extensions[xp.run_conf].tag == 7
    assert job.updater.Extensions[xp.xp_gamma] == 0.5
    conf = job.neuralnet.layer[1].Extensions[xp.scale_conf]
    assert conf.factor == 2.5 and conf.note == "none"
    # it survives the trip to a job's processes (serialised JobProto)
    again = job_pb2.JobProto.FromString(job.SerializeToString())
    assert again.neuralnet.layer[1].Extensions[xp.scale_conf].factor == 2.5
    assert "xp.scale_conf" in [f.full_name for f in extensions_of(job_pb2.LayerProto)]


def test_an_unknown_extension_is_a_located_error_with_the_others(xp, tmp_path):
    body = (HEAD + "neuralnet {\n" + DATA
            + 'layer { name: "s" type: kDummy srclayers: "data" [nosuch] { a: 1 } }\n'
            + 'layer { name: "t" type: kDummy srclayers: "data" [scale_conf] { factor: 1 } }\n'
            + 'layer { name: "u" type: kDummy srclayers: "nolayer" }\n'
            + "}\n")
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_job(path)
    text = [str(p) for p in e.value.problems]
    assert path + at(body, "[nosuch]") + "extension [nosuch] is not defined: no loaded .proto " \
        "extends singa.LayerProto with it; give the .proto that defines it to singa" in "\n".join(text)
    (nosuch,) = [t for t in text if "[nosuch]" in t]
    assert re.search(r"extensions of singa.LayerProto loaded: .*\[xp.scale_conf\]", nosuch)
    # a bare name is a close miss of the loaded one
    assert path + at(body, "[scale_conf]") + "extension [scale_conf] is not defined: no loaded " \
        ".proto extends singa.LayerProto with it; did you mean [xp.scale_conf]?" in text
    # every problem at once: the rules ran too
    assert any("nolayer" in t for t in text)


def test_an_extension_without_its_proto_is_an_error(tmp_path):
    body = HEAD + "[other.thing] { }\nneuralnet {\n" + DATA + "}\n"
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_job(path)
    (p,) = [p for p in e.value.problems if "other.thing" in p.message]
    assert p.where == path + at(body, "[other.thing]")[:-2] and p.severity == "error"
    assert "no loaded .proto extends singa.JobProto with it" in p.message
    assert "--proto FILE.proto" in p.message


def test_mistakes_inside_and_around_an_extension_are_located(xp, tmp_path):
    line = 'layer { name: "s" type: kDummy srclayers: "data" [xp.scale_conf] { factr: 2 } }\n'
    body = HEAD + "neuralnet {\n" + DATA + line + "}\n"
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, body))
    (p,) = e.value.problems
    assert p.where.endswith(at(body, "factr")[:-2])
    assert "has no field named \"factr\"; did you mean 'factor'?" in p.message
    # a job extension written in a layer
    body = HEAD + "neuralnet {\n" + DATA.replace("} }", "} [xp.run_conf] { } }") + "}\n"
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, body))
    assert "[xp.run_conf] extends singa.JobProto: write it inside a block of that type" \
        in str(e.value)
    # a required field of the user's message
    body = HEAD + "neuralnet {\n" + DATA + line.replace("factr: 2", "") + "}\n"
    with pytest.raises(ConfigError, match=r"layer 's': scale_conf.factor is required"):
        load_job(write(tmp_path, body))


def test_protoc_errors_name_the_file_and_place(tmp_path):
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto2";\nimport "job.proto";\n'
                   "extend singa.LayerProto {\n  optional int32 low = 50;\n}\n")
    with pytest.raises(UserError) as e:
        compile_proto(bad)
    msg = str(e.value)
    assert f"--proto {bad}: protoc could not compile it" in msg
    assert f"{bad}:4:" in msg and "does not declare 50 as an extension number" in msg
    assert "1001-1100 of singa.LayerProto" in msg
    with pytest.raises(UserError, match="no such file"):
        compile_proto(tmp_path / "nope.proto")
    with pytest.raises(UserError, match="expected a .proto file"):
        compile_proto(tmp_path / "x.txt")


def test_two_different_protos_of_one_name_are_refused(xp, tmp_path):
    (tmp_path / "xp.proto").write_text(XP_PROTO.replace("tag = 1", "tag = 2"))
    with pytest.raises(UserError, match=r"cannot load it: .*duplicate file name"):
        load_proto(tmp_path / "xp.proto")


def test_the_generated_module_ships_and_needs_no_protoc(xp, xp_proto, tmp_path):
    """What a job's process does: import the shipped xp_pb2.py, parse the conf
    (as `singa submit` hands it over), with grpc_tools unavailable."""
    shipped, layers = plugins.expand(["layers.py", str(xp_proto)])  # protos first
    assert layers == "layers.py" and shipped == xp.__file__
    assert shipped.endswith("xp_pb2.py") and "from conf import job_pb2" in Path(shipped).read_text()
    body = (HEAD + "neuralnet {\n" + DATA
            + 'layer { name: "s" type: kDummy srclayers: "data" [xp.scale_conf] { factor: 3 } }\n}\n')
    conf = write(tmp_path, body)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["grpc_tools"] = None          # no protoc here
        from runtime import plugins
        from runtime.config import load_job
        plugins.load([{shipped!r}])
        import xp_pb2                              # as the user's layer module does
        job = load_job({conf!r}).proto
        print(job.neuralnet.layer[1].Extensions[xp_pb2.scale_conf].factor)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3.0"


# ------------------------------------------------------------------- CLI ---
def singa(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_validate_with_a_proto(tmp_path):
    (tmp_path / "xp.proto").write_text(XP_PROTO)
    body = (HEAD + "neuralnet {\n" + DATA
            + 'layer { name: "s" type: kDummy srclayers: "data" [xp.scale_conf] { factor: 3 } }\n'
            + "}\ncluster { workspace: \"ws\" }\n")
    write(tmp_path, body)
    r = singa("validate", "job.conf", cwd=tmp_path)
    assert r.returncode == 2
    assert "job.conf" + at(body, "[xp.scale_conf]") + "extension [xp.scale_conf] is not defined" \
        in r.stderr
    for opts in (["--proto", "xp.proto"], ["--module", "xp.proto"]):
        r = singa("validate", "job.conf", *opts, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    r = singa("validate", "job.conf", "--proto", "xp.py", cwd=tmp_path)
    assert r.returncode == 2 and "--proto xp.py: expected a .proto file" in r.stderr
    (tmp_path / "bad.proto").write_text("syntax = \"proto2\";\nmessage {\n")
    r = singa("validate", "job.conf", "--proto", "bad.proto", cwd=tmp_path)
    assert r.returncode == 2 and "bad.proto:2:" in r.stderr and "Traceback" not in r.stderr


def _job_with_scale(tmp_path: Path, name: str) -> Path:
    from tests.jobs.test_supervision import job_conf

    conf = job_conf(tmp_path, name, "nworkers_per_group: 2", steps=12)
    text = conf.read_text().replace('srclayers: "drop1"', 'srclayers: "scale"')
    text = text.replace('  layer { name: "loss"',
                        '  layer { name: "scale" user_type: "XpScale" srclayers: "drop1"\n'
                        '          [xp.scale_conf] { factor: 0.5 } }\n  layer { name: "loss"')
    conf.write_text(text)
    (tmp_path / "xp.proto").write_text(XP_PROTO)
    (tmp_path / "scale.py").write_text(SCALE_LAYER)
    return conf


def test_a_job_with_a_user_config_block_runs_in_two_processes(tmp_path):
    """The generated module ships with the job (here given as the compiled
    file; see the next test for `--proto`)."""
    conf = _job_with_scale(tmp_path, "xpjob")
    shipped = str(compile_proto(tmp_path / "xp.proto"))
    r = singa("submit", conf.name, "--module", shipped, "--module", "scale.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 12  Loss = " in r.stdout
    from runtime.jobs import jobdb

    job = jobdb.JobDB().jobs()[-1]
    assert job.state == jobdb.SUCCEEDED and job.nprocs == 2
    assert job.options["modules"] == ["xp_pb2.py", "scale.py"]


def test_submit_with_a_proto(tmp_path):
    if "--proto" not in singa("submit", "--help", cwd=tmp_path).stdout:
        pytest.skip("singa submit has no --proto option yet (runtime.plugins.expand is to be "
                    "called on its modules; see the programming guide)")
    conf = _job_with_scale(tmp_path, "xpproto")
    r = singa("submit", conf.name, "--proto", "xp.proto", "--module", "scale.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Test @ step 12  Loss = " in r.stdout
