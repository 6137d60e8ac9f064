"""Param slicing: how the params of a net are cut into slices and spread over servers.

SINGA v0.3 (reference §5.5) shards the params of a net over the servers of
a server group, and names a master server group for each shard:

    lcm          = LCM(nserver_groups, nservers_per_group)
    slices       = slice_sizes(lcm, param sizes)            # SINGA's Slice
    slice2server = partition_slices(nservers_per_group, all slice sizes)
    slice2group  = partition_slices(nserver_groups, all slice sizes)

Every server group holds every slice (a full replica of the params): slice
`s` lives on server `slice2server[s]` of each group, and server group
`slice2group[s]` is its master, to which the other groups sync (Distributed
Hogwild). Slices get global ids 0, 1, ... in param order, then in order
within a param; a param's id is its index in the list the plan is built from.

`SlicePlan` is pure arithmetic over (param name, size) pairs and a `Cluster`,
so every process that builds the same net computes the same plan and the
workers, stubs and servers agree without talking. This module is not the
transport: see `runtime/ps/server.py` and the stub for the messages.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.cluster import Cluster
from runtime.comm.msg import Addr

log = logging.getLogger(__name__)


def _box_size(total: int, num: int) -> tuple[int, int]:
    """SINGA's box capacity and tolerance: avg = total/num + total%num, avg/10."""
    avg = total // num + total % num
    return avg, avg // 10


def _check(num: int, sizes: Sequence[int], what: str) -> None:
    if num < 1:
        raise ValueError(f"{what}: the number of boxes must be >= 1, got {num}")
    bad = [x for x in sizes if x < 0]
    if bad:
        raise ValueError(f"{what}: sizes must be >= 0, got {bad[0]}")


def slice_sizes(num: int, sizes: Sequence[int]) -> list[list[int]]:
    """SINGA's `Slice(num, sizes)`: the sizes of each param's slices.

    The params, concatenated in order, are poured into boxes of capacity
    `avg = total // num + total % num`. A param that fits in what is left of
    the current box goes in whole; one that overflows it by at most
    `avg // 10` also goes in whole (and closes the box); otherwise the rest
    of the box is filled with a slice of the param, if that rest is at least
    the tolerance, and a new box is opened. Small params therefore stay
    whole and large ones are cut at box boundaries. A param of size 0 has no
    slices.

    >>> slice_sizes(4, [14112, 96, 256, 884736, 384])
    [[14112], [96], [256], [210432, 224896, 224896, 224512], [384]]
    """
    _check(num, sizes, "slice_sizes")
    avg, tol = _box_size(sum(sizes), num)
    room = avg  # what is left of the current box
    out: list[list[int]] = []
    for size in sizes:
        pieces: list[int] = []
        left = size
        while left > 0:
            if left <= room + tol:
                pieces.append(left)
                room = max(room - left, 0)
                left = 0
            else:
                # too big for this box: fill what is worth filling, open the next
                if room >= tol and room > 0:
                    pieces.append(room)
                    left -= room
                room = avg
        out.append(pieces)
    return out


def partition_slices(num: int, slices: Sequence[int]) -> list[int]:
    """SINGA's `PartitionSlices(num, slices)`: the box (0..num-1) of each slice.

    A greedy fill of `num` boxes in order, with SINGA's capacity and
    tolerance (as in `slice_sizes`), never cutting a slice.

    Differences from SINGA, which only matter for tiny totals: a slice too
    big for an empty box goes into it anyway (SINGA loops forever), and the
    box index is capped at num-1 (SINGA would name a server that does not
    exist).

    >>> partition_slices(2, [1] * 8)
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    _check(num, slices, "partition_slices")
    avg, tol = _box_size(sum(slices), num)
    room, box = avg, 0
    out: list[int] = []
    for x in slices:
        while True:
            if x <= room:
                room -= x
                break
            if x <= room + tol or room == avg:
                room = 0
                break
            room, box = avg, box + 1
        out.append(box)
    if out and out[-1] >= num:
        log.warning("partition_slices: %d slices need %d boxes of %d; the extra ones go "
                    "to box %d", len(slices), out[-1] + 1, avg, num - 1)
        out = [min(b, num - 1) for b in out]
    return out


@dataclass(frozen=True)
class SliceInfo:
    """One slice: its global `id`, the `param` id it belongs to and where it
    lies in that param's flat array (`offset`, `size`), the server id it lives
    on within every server group and its master server group."""

    id: int
    param: int
    offset: int
    size: int
    server: int
    group: int

    def __repr__(self) -> str:
        return (f"SliceInfo({self.id}: param {self.param} [{self.offset}:"
                f"{self.offset + self.size}] on server {self.server}, master group {self.group})")


class SlicePlan:
    """The slices of a net's owner params and their servers (see module doc).

    `params` lists (name, size) of the params that own values, in the net's
    order; `param_id(name)` is the index in that list and is the `param`
    field of every message about it.
    """

    def __init__(self, params: Sequence[tuple[str, int]], cluster: Cluster):
        names = [str(n) for n, _ in params]
        sizes = [int(s) for _, s in params]
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise ValueError(f"SlicePlan: param name {n!r} is listed twice")
            seen.add(n)
        for n, s in zip(names, sizes):
            if s < 0:
                raise ValueError(f"SlicePlan: param {n!r} has size {s}, expected >= 0")
        self.cluster = cluster
        self.names = names
        self.sizes = sizes
        self._ids = {n: i for i, n in enumerate(names)}
        self.lcm = math.lcm(cluster.nserver_groups, cluster.nservers_per_group)
        per_param = slice_sizes(self.lcm, sizes) if sizes else []
        flat = [x for pieces in per_param for x in pieces]
        self.slice2server = partition_slices(cluster.nservers_per_group, flat) if flat else []
        self.slice2group = partition_slices(cluster.nserver_groups, flat) if flat else []
        self.slices: list[SliceInfo] = []
        self._of_param: list[list[SliceInfo]] = []
        for pid, pieces in enumerate(per_param):
            mine, offset = [], 0
            for size in pieces:
                sid = len(self.slices)
                info = SliceInfo(sid, pid, offset, size, self.slice2server[sid], self.slice2group[sid])
                self.slices.append(info)
                mine.append(info)
                offset += size
            self._of_param.append(mine)

    # ------------------------------------------------------------ lookup ---
    def param_id(self, param: int | str) -> int:
        """The id of a param given by name or id; unknown ones raise KeyError."""
        if isinstance(param, str):
            if param not in self._ids:
                raise KeyError(f"param {param!r} is not in the slice plan "
                               f"(known: {', '.join(self.names) or 'none'})")
            return self._ids[param]
        if not 0 <= param < len(self.names):
            raise KeyError(f"param id {param} is not in 0..{len(self.names) - 1}")
        return int(param)

    def slices_of(self, param: int | str) -> list[SliceInfo]:
        """The slices of a param, in order of offset."""
        return list(self._of_param[self.param_id(param)])

    def slices_on(self, server: int) -> list[SliceInfo]:
        """The slices that server `server` of each server group holds."""
        return [s for s in self.slices if s.server == server]

    def server_of(self, slice_id: int, server_grp: int) -> Addr:
        """The address of the server holding `slice_id` in server group `server_grp`."""
        return Addr.server(server_grp, self.slices[slice_id].server)

    def master_of(self, slice_id: int) -> Addr:
        """The server that a non-master group syncs `slice_id` with."""
        s = self.slices[slice_id]
        return Addr.server(s.group, s.server)

    # ------------------------------------------------------------ arrays ---
    def split(self, param: int | str, flat: np.ndarray) -> list[np.ndarray]:
        """Views of a param's values, one per slice (writes go through)."""
        pid = self.param_id(param)
        flat = flat.reshape(-1)
        if flat.size != self.sizes[pid]:
            raise ValueError(f"param {self.names[pid]!r}: array of {flat.size} values, "
                             f"expected {self.sizes[pid]}")
        return [flat[s.offset:s.offset + s.size] for s in self._of_param[pid]]

    def assemble(self, param: int | str, parts: Sequence[np.ndarray],
                 out: np.ndarray | None = None) -> np.ndarray:
        """Concatenate a param's slices (in slice order) into `out` or a new flat array."""
        pid = self.param_id(param)
        mine = self._of_param[pid]
        if len(parts) != len(mine):
            raise ValueError(f"param {self.names[pid]!r}: {len(parts)} parts, "
                             f"expected {len(mine)} slices")
        if out is None:
            out = np.empty(self.sizes[pid], dtype=np.float32)
        dst = out.reshape(-1)
        if dst.size != self.sizes[pid]:
            raise ValueError(f"param {self.names[pid]!r}: output of {dst.size} values, "
                             f"expected {self.sizes[pid]}")
        for s, part in zip(mine, parts):
            part = np.asarray(part).reshape(-1)
            if part.size != s.size:
                raise ValueError(f"slice {s.id} of param {self.names[pid]!r}: "
                                 f"{part.size} values, expected {s.size}")
            dst[s.offset:s.offset + s.size] = part
        return out

    def __repr__(self) -> str:
        return (f"SlicePlan({len(self.names)} params, {len(self.slices)} slices, lcm={self.lcm}, "
                f"{self.cluster.nserver_groups}x{self.cluster.nservers_per_group} servers)")
