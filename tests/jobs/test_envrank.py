"""Rank and size from the variables srun / mpirun / mpiexec set."""
from __future__ import annotations

import pytest

from runtime.errors import UserError
from runtime.jobs.envrank import rank_from_env


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"PATH": "/bin", "SLURM_JOB_ID": "7"}, None),  # an allocation, but no task of srun
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, (3, 4, "slurm")),
    ({"SLURM_PROCID": "1", "SLURM_NPROCS": "2"}, (1, 2, "slurm")),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "8"}, (0, 8, "openmpi")),
    ({"PMI_RANK": "5", "PMI_SIZE": "6"}, (5, 6, "pmi")),
    ({"SLURM_PROCID": " 2 ", "SLURM_NTASKS": "3\n"}, (2, 3, "slurm")),
    ({"SLURM_PROCID": "", "PMI_RANK": "1", "PMI_SIZE": "2"}, (1, 2, "pmi")),
])
def test_rank_from_env(env, expected):
    assert rank_from_env(env) == expected


def test_mpirun_inside_an_sbatch_script_uses_the_mpi_rank():
    # the batch script runs as Slurm task 0; mpirun's children inherit that
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4",
           "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"}
    assert rank_from_env(env) == (2, 4, "openmpi")
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "PMI_RANK": "3", "PMI_SIZE": "4"}
    assert rank_from_env(env) == (3, 4, "pmi")


@pytest.mark.parametrize("env, fragment", [
    ({"SLURM_PROCID": "x", "SLURM_NTASKS": "4"}, "SLURM_PROCID='x' is not an integer"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "four"}, "SLURM_NTASKS='four' is not an integer"),
    ({"SLURM_PROCID": "1"}, "SLURM_PROCID is set (1) but SLURM_NTASKS / SLURM_NPROCS is not"),
    ({"SLURM_PROCID": "4", "SLURM_NTASKS": "4"}, "SLURM_PROCID=4 is outside 0..3"),
    ({"PMI_RANK": "-1", "PMI_SIZE": "4"}, "PMI_RANK=-1 is outside 0..3"),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "0"},
     "OMPI_COMM_WORLD_SIZE=0: expected the number of processes"),
])
def test_malformed_values_name_the_variable(env, fragment):
    assert fragment in str(pytest.raises(UserError, rank_from_env, env).value)


def test_default_reads_os_environ(monkeypatch):
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert rank_from_env() == (1, 2, "slurm")
