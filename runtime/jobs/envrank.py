"""A process's rank and the job's size, from the variables srun or mpirun set.

Under `srun python -m runtime.train.node ...` or `mpirun -np 4 python -m ...` there
is no launcher of ours: each process learns which SINGA process it is from
its environment (reference peers.md §4.1, launch mechanisms 2 and 3).

Sources, the most specific first:

    Open MPI     OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE
    MPICH / PMI  PMI_RANK, PMI_SIZE                (also Intel MPI, srun --mpi=pmi2)
    Slurm        SLURM_PROCID, SLURM_NTASKS (or SLURM_NPROCS)

MPI comes before Slurm on purpose: `mpirun` run inside an sbatch script hands
its children the batch script's own `SLURM_PROCID=0`, which is stale there,
while the MPI variables are set by mpirun for each child and are right. When
srun itself sets PMI_RANK it equals SLURM_PROCID, so the order costs nothing.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from runtime.errors import UserError

# (source, rank variable, size variables in order of preference)
SOURCES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("openmpi", "OMPI_COMM_WORLD_RANK", ("OMPI_COMM_WORLD_SIZE",)),
    ("pmi", "PMI_RANK", ("PMI_SIZE",)),
    ("slurm", "SLURM_PROCID", ("SLURM_NTASKS", "SLURM_NPROCS")),
)


def _int(environ: Mapping[str, str], var: str, what: str) -> int:
    text = environ[var].strip()
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{var}={environ[var]!r} is not an integer; expected the {what} "
                        "set by the launcher (srun/mpirun)") from None


def rank_from_env(environ: Mapping[str, str] = os.environ) -> tuple[int, int, str] | None:
    """(rank, size, source) for the first launcher whose variables are set,
    source being "openmpi", "pmi" or "slurm"; None when none is.

    A rank without a size, a value that is not an integer, a size below 1 or
    a rank outside [0, size) is a UserError naming the variable.
    """
    for source, rank_var, size_vars in SOURCES:
        if not environ.get(rank_var, "").strip():
            continue
        size_var = next((v for v in size_vars if environ.get(v, "").strip()), None)
        if size_var is None:
            raise UserError(f"{rank_var} is set ({environ[rank_var]}) but "
                            f"{' / '.join(size_vars)} is not; expected both from the launcher")
        rank = _int(environ, rank_var, "rank of this process")
        size = _int(environ, size_var, "number of processes")
        if size < 1:
            raise UserError(f"{size_var}={size}: expected the number of processes, >= 1")
        if not 0 <= rank < size:
            raise UserError(f"{rank_var}={rank} is outside 0..{size - 1} "
                            f"({size_var}={size})")
        return rank, size, source
    return None
