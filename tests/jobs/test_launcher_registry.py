"""Each launcher builds itself from the job's options through the launcher
registry; an unknown name lists the known ones."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from runtime.errors import UserError
from runtime.jobs.launcher import LocalLauncher, SshLauncher
from runtime.jobs.launchers import launcher_registry
from runtime.jobs.mpi import MpiLauncher
from runtime.jobs.slurm import SlurmLauncher


def build(name: str, options: dict, tmp_path, hosts=("localhost",)):
    row = SimpleNamespace(id=7, name="mnist", log_dir=str(tmp_path), hosts=list(hosts))
    return launcher_registry.get(name).from_options(row, {"launcher": name, **options})


def test_every_launcher_builds_itself_from_the_options(tmp_path):
    assert isinstance(build("local", {}, tmp_path), LocalLauncher)
    ssh = build("ssh", {"ssh": {"port": 2222, "identity": "/k"}}, tmp_path)
    assert isinstance(ssh, SshLauncher) and (ssh.opts.port, ssh.opts.identity) == (2222, "/k")
    slurm = build("slurm", {}, tmp_path)
    assert isinstance(slurm, SlurmLauncher) and slurm.job_name == "singa-7-mnist"
    mpi = build("mpi", {"ssh": {"port": 2222}}, tmp_path, hosts=["a", "a", "b"])
    assert isinstance(mpi, MpiLauncher) and mpi.hosts == ["a", "a", "b"]
    assert mpi.opts.port == 2222 and mpi.hostfile_path == tmp_path / "mpi-hostfile"
    # mpirun's sequential mapper: one line a rank, where singa placed it
    assert mpi.write_hostfile(tmp_path / "hf").read_text() == "a\na\nb\n"


def test_only_slurm_chooses_the_hosts():
    assert [n for n in launcher_registry.known() if launcher_registry.get(n).chooses_hosts] == ["slurm"]


def test_an_unknown_launcher_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown launcher 'pbs'; known: local, mpi, slurm, ssh"):
        launcher_registry.get("pbs")
