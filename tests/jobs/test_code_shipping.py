"""User code ships with the job: the processes import the sources as they
were at submit time, from the job's own bundle, not from where the user
keeps them (they may not exist on the hosts that run the job)."""
from __future__ import annotations

import shutil
import sys

import pytest

from runtime.jobs import jobdb
from runtime.jobs.code import bundle, modules_to_load, pack, unpack
from tests.jobs.test_supervision import ended, job_conf, nothing_left, submit_detached
from tests.test_training import USER_LAYER


def user_layer_conf(tmp_path, name: str, cluster: str):
    conf = job_conf(tmp_path, name, cluster, steps=12)
    text = conf.read_text().replace('srclayers: "drop1"', 'srclayers: "scale"')
    text = text.replace('  layer { name: "loss"',
                        '  layer { name: "scale" user_type: "Scale2" srclayers: "drop1" }\n'
                        '  layer { name: "loss"')
    conf.write_text(text)
    return conf


@pytest.fixture
def reg():
    with jobdb.JobDB() as r:
        yield r


def test_a_user_file_runs_in_every_process_after_it_is_gone(tmp_path, reg):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mylayers.py").write_text(USER_LAYER)
    conf = user_layer_conf(tmp_path, "shipped", "nworkers_per_group: 2")
    job_id = submit_detached(conf, "--exec", str(src / "mylayers.py"))
    shutil.rmtree(src)  # the job's processes must not need the user's copy
    job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason
    assert job.options["modules"] == ["mylayers.py"]
    nothing_left(reg, job_id)


def test_a_user_package_ships_by_its_dotted_name(tmp_path, reg, monkeypatch):
    pkg = tmp_path / "src" / "userpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text(USER_LAYER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "src"))
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        conf = user_layer_conf(tmp_path, "pkg", "nworkers_per_group: 2")
        job_id = submit_detached(conf, "--module", "userpkg.layers")
    finally:
        sys.path.remove(str(tmp_path / "src"))
    shutil.rmtree(tmp_path / "src")
    job = ended(reg, job_id)
    assert job.state == jobdb.SUCCEEDED, job.reason


def test_bundle_round_trip(tmp_path):
    (tmp_path / "a.py").write_text("X = 1\n")
    dest = tmp_path / "bundle"
    loads = bundle([str(tmp_path / "a.py"), "json"], dest)  # json: installed, not shipped
    assert loads == ["a.py", "json"]
    files = pack(dest)
    assert list(files) == ["a.py"]
    out = tmp_path / "out"
    unpack(files, out)
    assert (out / "a.py").read_text() == "X = 1\n"
    assert modules_to_load(loads, out) == [str(out / "a.py"), "json"]
    with pytest.raises(ValueError):
        unpack({"../evil.py": ""}, out)
