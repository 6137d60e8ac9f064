"""Each launcher builds itself from the job's options through the launcher
registry; an unknown name lists the known ones."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from runtime.errors import UserError
from runtime.jobs.launcher import LocalLauncher, MpiLauncher, SshLauncher
from runtime.jobs.launchers import launcher_registry
from runtime.jobs.slurm import SlurmLauncher


def build(name: str, options: dict, tmp_path):
    row = SimpleNamespace(id=7, name="mnist", log_dir=str(tmp_path))
    return launcher_registry.get(name).from_options(row, {"launcher": name, **options})


def test_every_launcher_builds_itself_from_the_options(tmp_path):
    assert isinstance(build("local", {}, tmp_path), LocalLauncher)
    ssh = build("ssh", {"ssh": {"port": 2222, "identity": "/k"}}, tmp_path)
    assert isinstance(ssh, SshLauncher) and (ssh.opts.port, ssh.opts.identity) == (2222, "/k")
    slurm = build("slurm", {}, tmp_path)
    assert isinstance(slurm, SlurmLauncher) and slurm.job_name == "singa-7-mnist"
    assert build("mpi", {}, tmp_path).hostfile is None
    mpi = build("mpi", {"mpi_hosts": [["a", 2], ["b", 1]]}, tmp_path)
    assert isinstance(mpi, MpiLauncher) and mpi.hostfile == str(tmp_path / "mpi-hostfile")
    assert (tmp_path / "mpi-hostfile").read_text() == "a slots=2\nb slots=1\n"


def test_only_slurm_chooses_the_hosts():
    assert [n for n in launcher_registry.known() if launcher_registry.get(n).chooses_hosts] == ["slurm"]


def test_an_unknown_launcher_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown launcher 'pbs'; known: local, mpi, slurm, ssh"):
        launcher_registry.get("pbs")
