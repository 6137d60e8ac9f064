"""Every launcher, registered: import `launcher_registry` from here, not from
`runtime.jobs.launcher`, so `--launcher NAME` knows the launchers that live
in modules of their own (`runtime.jobs.mpi`, `runtime.jobs.slurm`). Those
modules are light (standard library only) until a job uses them."""
from __future__ import annotations

from runtime.jobs import mpi as _mpi  # noqa: F401 - registers "mpi"
from runtime.jobs import slurm as _slurm  # noqa: F401 - registers "slurm"
from runtime.jobs.launcher import launcher_registry

__all__ = ["launcher_registry"]
