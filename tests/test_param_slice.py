"""Param slicing (runtime/ps/param_slice.py): SINGA's Slice/PartitionSlices and the SlicePlan.

The expected slicings are worked out by hand from the rule: boxes of
avg = total // num + total % num, tolerance avg // 10.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from runtime.cluster import Cluster
from runtime.comm.msg import Addr
from runtime.ps.param_slice import SlicePlan, partition_slices, slice_sizes

# the sizes of SINGA's unit test (a convnet: conv1 w, b, ..., a big fc weight)
SIZES = [14112, 96, 256, 884736, 384]
PARAMS = [(f"p{i}", s) for i, s in enumerate(SIZES)]


# ----------------------------------------------------------- slice_sizes ---
def test_slice_matches_singa_unit_test():
    assert slice_sizes(4, SIZES) == [[14112], [96], [256],
                                     [210432, 224896, 224896, 224512], [384]]


def test_one_box_keeps_every_param_whole():
    assert slice_sizes(1, SIZES) == [[s] for s in SIZES]


@pytest.mark.parametrize("num,sizes,expected", [
    # avg 55, tol 5: 45 left in box 0 is worth filling, the rest fits box 1
    (2, [10, 100], [[10], [45, 55]]),
    # avg 53, tol 5: 3 left in box 0 is below the tolerance, so 55 starts box 1 whole
    (2, [50, 55], [[50], [55]]),
    # avg 51, tol 5: 54 overflows box 0's 51 by 3 <= tol, so it stays whole
    (2, [54, 48], [[54], [48]]),
    # total < num: avg = 0 + 3 = 3, tol 0
    (4, [1, 2], [[1], [2]]),
    # a param of size 0 has no slices
    (2, [4, 0, 4], [[4], [], [4]]),
])
def test_slice_rule(num, sizes, expected):
    assert slice_sizes(num, sizes) == expected


@pytest.mark.parametrize("num", [1, 2, 3, 4, 6, 7])
def test_slices_cover_each_param_exactly(num):
    rng = np.random.default_rng(num)
    sizes = [int(x) for x in rng.integers(1, 50000, size=12)]
    out = slice_sizes(num, sizes)
    assert [sum(p) for p in out] == sizes
    assert all(x > 0 for p in out for x in p)


@pytest.mark.parametrize("num,sizes,why", [
    (0, [3], "number of boxes must be >= 1, got 0"),
    (2, [3, -1], "sizes must be >= 0, got -1"),
])
def test_slice_rejects_bad_input(num, sizes, why):
    with pytest.raises(ValueError, match=why):
        slice_sizes(num, sizes)


# ------------------------------------------------------ partition_slices ---
def test_partition_matches_singa_unit_test():
    assert partition_slices(2, [5] * 8) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert partition_slices(4, [5] * 8) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_partition_of_unequal_slices():
    # avg 449792, tol 44979: the first four fill box 0 exactly
    assert partition_slices(2, [14112, 96, 256, 435328, 449408, 384]) == [0, 0, 0, 0, 1, 1]
    assert partition_slices(1, [3, 9, 1]) == [0, 0, 0]


def test_partition_oversized_slice_takes_an_empty_box():
    # avg = 5 + 1 = 6, tol 0: 10 can never fit; SINGA would loop forever
    assert partition_slices(2, [10, 1]) == [0, 1]


def test_partition_never_names_a_box_past_num(caplog):
    # avg 5, tol 0: the greedy fill wants boxes 0, 1, 2 for 3, 3, 3
    with caplog.at_level(logging.WARNING):
        assert partition_slices(2, [3, 3, 3]) == [0, 1, 1]
    assert "need 3 boxes" in caplog.text


# ------------------------------------------------------------- SlicePlan ---
def sizes_of(plan, pid):
    return [s.size for s in plan.slices_of(pid)]


def test_plan_one_server():
    plan = SlicePlan(PARAMS, Cluster())
    assert plan.lcm == 1
    assert [s.size for s in plan.slices] == SIZES
    assert plan.slice2server == [0] * 5 and plan.slice2group == [0] * 5


def test_plan_two_servers():
    plan = SlicePlan(PARAMS, Cluster(nservers_per_group=2))
    assert plan.lcm == 2
    assert sizes_of(plan, "p3") == [435328, 449408]
    assert [s.size for s in plan.slices] == [14112, 96, 256, 435328, 449408, 384]
    assert plan.slice2server == [0, 0, 0, 0, 1, 1]
    assert [s.id for s in plan.slices_on(1)] == [4, 5]


def test_plan_three_servers():
    plan = SlicePlan(PARAMS, Cluster(nservers_per_group=3))
    # avg 299862, tol 29986
    assert sizes_of(plan, "p3") == [285398, 299862, 299476]
    assert plan.slice2server == [0, 0, 0, 0, 1, 2, 2]
    s = plan.slices_of("p3")
    assert [(x.id, x.param, x.offset) for x in s] == [(3, 3, 0), (4, 3, 285398), (5, 3, 585260)]
    assert plan.server_of(4, 0) == Addr.server(0, 1)


def test_plan_server_groups_use_the_lcm_and_name_masters():
    c = Cluster(nworker_groups=2, nserver_groups=2, nservers_per_group=3)
    plan = SlicePlan(PARAMS, c)
    assert plan.lcm == 6
    assert sum(s.size for s in plan.slices) == sum(SIZES)
    assert set(plan.slice2group) == {0, 1} and set(plan.slice2server) == {0, 1, 2}
    assert plan.slice2group == sorted(plan.slice2group)  # a greedy fill in order
    last = plan.slices[-1]
    assert plan.master_of(last.id) == Addr.server(last.group, last.server) == Addr.server(1, 2)


def test_plan_is_deterministic():
    c = Cluster(nworker_groups=3, nserver_groups=3, nservers_per_group=2)
    a, b = SlicePlan(PARAMS, c), SlicePlan(list(PARAMS), c)
    assert a.slices == b.slices and a.slice2server == b.slice2server


def test_split_gives_views_and_assemble_restores():
    plan = SlicePlan([("w", 6), ("b", 2)], Cluster(nservers_per_group=2))
    # avg 4, tol 0: w -> [4, 2], b -> [2]
    assert [(s.param, s.offset, s.size, s.server) for s in plan.slices] == [
        (0, 0, 4, 0), (0, 4, 2, 1), (1, 0, 2, 1)]
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    parts = plan.split("w", w)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5]]
    parts[1][0] = 40  # a view: writes go to the param
    assert w[1, 1] == 40
    back = plan.assemble(0, [np.array([9, 8, 7, 6], np.float32), np.array([5, 4], np.float32)])
    assert back.tolist() == [9, 8, 7, 6, 5, 4]
    out = np.zeros((2, 3), np.float32)
    assert plan.assemble("w", parts, out) is out and out.ravel().tolist() == [0, 1, 2, 3, 40, 5]


def test_plan_errors_name_the_problem():
    c = Cluster()
    with pytest.raises(ValueError, match="'w' is listed twice"):
        SlicePlan([("w", 2), ("w", 3)], c)
    plan = SlicePlan([("w", 6), ("b", 2)], c)
    with pytest.raises(KeyError, match="'x' is not in the slice plan.*w, b"):
        plan.slices_of("x")
    with pytest.raises(ValueError, match="'w': array of 5 values, expected 6"):
        plan.split("w", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="slice 1 of param 'b': 3 values, expected 2"):
        plan.assemble("b", [np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="'w': 3 parts, expected 1 slices"):
        plan.assemble("w", [np.zeros(2, np.float32)] * 3)
