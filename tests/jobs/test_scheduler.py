"""The queue's rules (runtime.jobs.scheduler), without IO: admission by cores
and memory, FIFO within priority, backfill that never delays the head, and
dependencies."""
from __future__ import annotations

import math

from runtime.jobs.scheduler import Ask, Capacity, Entry, Parent, order, plan

HOST = {"localhost": Capacity(cores=4, mem=8 << 30)}


def job(i: int, state: str = "QUEUED", cores: int = 1, mem: int = 0, prio: int = 0,
        host: str = "localhost", eta: float = math.inf, after=(), caps=None) -> Entry:
    return Entry(id=i, state=state, demand={host: Ask(cores, mem)}, capacity=caps or HOST,
                 priority=prio, after=list(after), eta=eta)


def test_jobs_that_fit_are_admitted_in_order_and_the_rest_wait_with_the_reason():
    jobs = [job(1, "RUNNING", cores=2), job(2, cores=1), job(3, cores=2), job(4, cores=1)]
    p = plan(jobs, {})
    # job 4 fits in the last free core: once job 1 ends, job 3 has its 2 cores
    # even with job 4 still running, so job 4 does not delay it (backfill)
    assert p.admit == [2, 4]
    assert p.waiting == {3: "waiting for 1 core on localhost; next in line"}
    assert not p.cancel
    # with one more 1-core job running, job 2 takes the last free core
    p = plan(jobs + [job(5, "RUNNING", cores=1)], {})
    assert p.admit == [2]
    assert p.waiting == {3: "waiting for 2 cores on localhost; next in line",
                         4: "waiting for 1 core on localhost; 1 job ahead"}


def test_admission_by_memory():
    gib = 1 << 30
    jobs = [job(1, "RUNNING", cores=1, mem=6 * gib), job(2, cores=1, mem=3 * gib)]
    p = plan(jobs, {})
    assert p.admit == []
    assert p.waiting[2] == "waiting for 1.0 GiB of memory on localhost; next in line"
    assert plan([job(1, "RUNNING", cores=1, mem=5 * gib), job(2, cores=1, mem=3 * gib)],
                {}).admit == [2]


def test_a_host_without_memory_accounting_checks_only_cores():
    caps = {"node1": Capacity(cores=2, mem=None)}
    jobs = [job(1, "RUNNING", cores=1, mem=1 << 40, host="node1", caps=caps),
            job(2, cores=1, mem=1 << 40, host="node1", caps=caps)]
    assert plan(jobs, {}).admit == [2]


def test_priority_first_then_fifo():
    jobs = [job(1, "RUNNING", cores=4), job(2), job(3, prio=5), job(4, prio=5), job(5, prio=-1)]
    assert [j.id for j in order(jobs)] == [3, 4, 2, 5]
    # when the running job ends, the four 1-core jobs start in that order
    p = plan([j for j in jobs if j.id != 1], {})
    assert p.admit == [3, 4, 2, 5]
    # with room for two only: the two high-priority ones
    jobs[0] = job(1, "RUNNING", cores=2)
    p = plan(jobs, {})
    assert p.admit == [3, 4]
    assert p.waiting[2] == "waiting for 1 core on localhost; next in line"
    assert p.waiting[5].endswith("; 1 job ahead")


def test_backfill_takes_only_what_the_head_will_not_need():
    # 4 cores: job 1 holds 3 (ends first), job 2 holds... nothing else. The head
    # (job 3) needs 2: once job 1 ends there are 4 free, 2 to spare, so a 1-core
    # job behind it may start now in the 1 free core without delaying it.
    jobs = [job(1, "RUNNING", cores=3, eta=100.0), job(3, cores=2), job(4, cores=1)]
    p = plan(jobs, {})
    assert p.admit == [4]
    assert p.waiting[3] == "waiting for 1 core on localhost; next in line"


def test_backfill_does_not_take_cores_the_head_waits_for():
    # 4 cores: job 1 holds 2 and ends soon, job 2 holds 1 and runs long. The head
    # (job 3) needs 3: when job 1 ends, 3 are free, exactly its need: no spare.
    jobs = [job(1, "RUNNING", cores=2, eta=10.0), job(2, "RUNNING", cores=1, eta=1000.0),
            job(3, cores=3), job(4, cores=1)]
    p = plan(jobs, {})
    assert p.admit == []
    assert "waiting behind job 3" in p.waiting[4]


def test_backfill_on_another_host_is_free():
    caps = {"a": Capacity(2), "b": Capacity(2)}
    jobs = [job(1, "RUNNING", cores=2, host="a", caps=caps), job(2, cores=2, host="a", caps=caps),
            job(3, cores=2, host="b", caps=caps)]
    p = plan(jobs, {})
    assert p.admit == [3]
    assert p.waiting[2] == "waiting for 2 cores on a; next in line"


def test_a_job_spanning_hosts_needs_room_on_every_one():
    caps = {"a": Capacity(2), "b": Capacity(2)}
    span = Entry(id=2, state="QUEUED", demand={"a": Ask(1), "b": Ask(1)}, capacity=caps)
    jobs = [job(1, "RUNNING", cores=2, host="b", caps=caps), span]
    p = plan(jobs, {})
    assert p.admit == []
    assert p.waiting[2] == "waiting for 1 core on b; next in line"
    assert plan([span], {}).admit == [2]


def test_dependencies_wait_then_start_or_are_cancelled_with_their_dependents():
    parents = {1: Parent("RUNNING", "rbm1")}
    jobs = [job(1, "RUNNING", cores=1), job(2, after=[(1, "ok")]), job(3, after=[(2, "ok")])]
    p = plan(jobs, parents)
    assert p.admit == []
    assert p.waiting[2] == "waiting for job 1 (rbm1) to succeed"
    # the parent succeeded: job 2 starts, job 3 still waits for job 2
    parents = {1: Parent("SUCCEEDED", "rbm1"), 2: Parent("QUEUED", "rbm2")}
    p = plan([j for j in jobs if j.id != 1], parents)
    assert p.admit == [2]
    assert p.waiting[3] == "waiting for job 2 (rbm2) to succeed"
    # the parent failed: job 2 is cancelled, and so is job 3 which needs job 2
    parents = {1: Parent("FAILED", "rbm1"), 2: Parent("QUEUED", "rbm2")}
    p = plan([j for j in jobs if j.id != 1], parents)
    assert p.admit == []
    assert p.cancel[2] == ("job 1 (rbm1) ended FAILED, so --after 1:ok can no longer hold "
                           "(it needs SUCCEEDED)")
    assert p.cancel[3].startswith("job 2 (rbm2) ended CANCELLED")


def test_after_any_starts_whatever_the_parent_became():
    p = plan([job(2, after=[(1, "any")])], {1: Parent("FAILED", "x")})
    assert p.admit == [2] and not p.cancel
    p = plan([job(2, after=[(1, "any")])], {1: Parent("RUNNING", "x")})
    assert p.waiting[2] == "waiting for job 1 (x) to end"


def test_a_job_waiting_on_a_dependency_does_not_hold_up_the_queue():
    jobs = [job(1, "RUNNING"), job(2, after=[(1, "ok")]), job(3)]
    p = plan(jobs, {1: Parent("RUNNING", "a")})
    assert p.admit == [3]
