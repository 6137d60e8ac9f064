"""Hostfiles, --hosts, placement, locality, the advertised address, Slurm node lists."""
from __future__ import annotations

import socket

import pytest

from runtime.errors import UserError
from runtime.jobs.hostfile import (
    Host,
    advertise_address,
    expand_nodelist,
    expand_tasks_per_node,
    is_local,
    parse_hostfile,
    parse_hosts,
    place,
    slurm_hosts,
)


def write(tmp_path, text: str, name: str = "hosts.txt") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------- hostfile ---
def test_all_dialects_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "# cluster A\n"
                           "node1\n"
                           "\n"
                           "node2 slots=4   # MPI style\n"
                           "node3:2\n"
                           "   node4 slots = 3\n"
                           "[fd00::5] slots=2\n"
                           "fd00::6 slots=1\n"
                           "10.0.0.7#no space before the comment\n")
    hosts = parse_hostfile(path)
    assert [(h.name, h.slots) for h in hosts] == [
        ("node1", 1), ("node2", 4), ("node3", 2), ("node4", 3),
        ("fd00::5", 2), ("fd00::6", 1), ("10.0.0.7", 1)]
    assert hosts[0] == Host("node1", 1, f"{path}:2")
    assert hosts[1].where == f"{path}:4"


def test_duplicates_name_both_lines(tmp_path):
    path = write(tmp_path, "a\nb slots=2\n\nB\n")
    with pytest.raises(UserError) as e:
        parse_hostfile(path)
    assert str(e.value) == (f"{path}:4: duplicate host 'B' (already listed at {path}:2); "
                            "list each host once and give it slots=N")


@pytest.mark.parametrize("line, fragment", [
    ("a slots=0", "host 'a': slots must be a positive integer, as in 'node1 slots=2', got '0'"),
    ("a slots=-1", "got '-1'"),
    ("a slots=two", "got 'two'"),
    ("a slots=2.5", "got '2.5'"),
    ("a slots=", "got ''"),
    ("a:0", "got '0'"),
    ("a max_slots=4", "unknown key 'max_slots' for host 'a'; the keys are 'slots' and 'mem'"),
    ("a slots=1 slots=2", "gives its slots twice"),
    ("a:2 slots=2", "gives its slots twice"),
    ("a b", "unexpected 'b' after host 'a'"),
    ("slots=2", "'slots=2' where a host name was expected"),
    ("-node1", "not a host name or address (letters, digits"),
    ("alice@node1", "--ssh-user"),
    ("a;b", "not a host name or address"),
])
def test_bad_lines_say_where_and_what(tmp_path, line, fragment):
    path = write(tmp_path, f"ok1\n{line}\n")
    with pytest.raises(UserError) as e:
        parse_hostfile(path)
    assert str(e.value).startswith(f"{path}:2: ")
    assert fragment in str(e.value)


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "a slots=0\nb foo=1\nc\nc\n")
    lines = str(pytest.raises(UserError, parse_hostfile, path).value).splitlines()
    assert [l.split(": ", 1)[0] for l in lines] == [f"{path}:1", f"{path}:2", f"{path}:4"]


def test_empty_missing_and_directory(tmp_path):
    empty = write(tmp_path, "# only a comment\n\n   \n")
    assert "no hosts (only comments and blank lines)" in str(
        pytest.raises(UserError, parse_hostfile, empty).value)
    missing = str(tmp_path / "nope.txt")
    assert str(pytest.raises(UserError, parse_hostfile, missing).value).startswith(
        f"{missing}: no such hostfile")
    assert "is a directory" in str(pytest.raises(UserError, parse_hostfile, str(tmp_path)).value)
    binary = tmp_path / "bin"
    binary.write_bytes(b"node1\n\xff\xfe\n")
    assert "not a text hostfile" in str(pytest.raises(UserError, parse_hostfile, str(binary)).value)


# ---------------------------------------------------------------- --hosts ---
def test_parse_hosts_inline():
    assert parse_hosts("h1:2, h2:2,h3,[::1]:2,[fd00::1]") == [
        Host("h1", 2, "--hosts"), Host("h2", 2, "--hosts"), Host("h3", 1, "--hosts"),
        Host("::1", 2, "--hosts"), Host("fd00::1", 1, "--hosts")]


@pytest.mark.parametrize("spec, fragment", [
    ("h1:0", "slots must be a positive integer"),
    ("h1:x", "got 'x'"),
    ("h1,,h2", "has an empty entry"),
    ("", "has an empty entry"),
    ("fd00::1", "put an IPv6 address in brackets, e.g. '[fd00::1]'"),
    ("[::1", "expected '[IPv6]' or '[IPv6]:SLOTS'"),
    ("h1,h2,H1", "'H1' listed more than once"),
])
def test_parse_hosts_errors(spec, fragment):
    e = pytest.raises(UserError, parse_hosts, spec).value
    assert str(e).startswith("--hosts: ")
    assert fragment in str(e)


# ---------------------------------------------------------------- place ---
def test_place_fills_hosts_in_order():
    hosts = parse_hosts("a:2,b:1,c:3")
    assert place(hosts, 4) == ["a", "a", "b", "c"]
    assert place(hosts, 6) == ["a", "a", "b", "c", "c", "c"]
    assert place(hosts, 0) == []


def test_place_too_few_slots_message():
    hosts = parse_hosts("a:2,b:1")
    with pytest.raises(UserError) as e:
        place(hosts, 4, what="2 worker groups x 2 workers")
    assert str(e.value) == ("the job needs 4 processes (2 worker groups x 2 workers) but the "
                            "hosts have 3 slots (a: 2, b: 1); add hosts or slots, or pass "
                            "--oversubscribe")
    assert "needs 2 processes but the hosts have 1 slot (a: 1)" in str(
        pytest.raises(UserError, place, parse_hosts("a"), 2).value)


def test_place_oversubscribe_round_robin():
    hosts = parse_hosts("a:2,b:1")
    assert place(hosts, 7, oversubscribe=True) == ["a", "a", "b", "a", "b", "a", "b"]
    with pytest.raises(UserError, match="no hosts"):
        place([], 1, oversubscribe=True)


# ------------------------------------------------------------- is_local ---
def test_is_local():
    assert is_local("127.0.0.1")
    assert is_local("127.3.4.5")
    assert is_local("localhost")
    assert is_local("LOCALHOST")
    assert is_local("::1") and is_local("[::1]")
    assert is_local(socket.gethostname())
    assert not is_local("no-such-host.invalid")
    assert not is_local("192.0.2.254")  # TEST-NET-1, never this machine's address


def test_is_local_knows_interface_addresses():
    import psutil

    addrs = [a.address for entries in psutil.net_if_addrs().values() for a in entries
             if a.family == socket.AF_INET]
    assert addrs and all(is_local(a) for a in addrs)


# --------------------------------------------------- advertise_address ---
def test_advertise_address():
    assert advertise_address(environ={}) == "127.0.0.1"
    assert advertise_address("127.0.0.1", environ={}) == "127.0.0.1"
    assert advertise_address(interface="lo", environ={}) == "127.0.0.1"
    assert advertise_address("127.0.0.1", environ={"SINGA_INTERFACE": "lo"}) == "127.0.0.1"


def test_advertise_address_unknown_interface_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        advertise_address(interface="nosuch0", environ={})
    msg = str(e.value)
    assert msg.startswith("network interface 'nosuch0' does not exist on ")
    assert "lo (127.0.0.1" in msg


def test_advertise_address_unresolvable_peer():
    with pytest.raises(UserError, match="cannot resolve host 'no-such-host.invalid'"):
        advertise_address("no-such-host.invalid", environ={})


# ---------------------------------------------------------------- slurm ---
@pytest.mark.parametrize("text, expected", [
    ("node1", ["node1"]),
    ("gnode[10,20-22],login01,n[001-003]",
     ["gnode10", "gnode20", "gnode21", "gnode22", "login01", "n001", "n002", "n003"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
    ("a,b", ["a", "b"]),
])
def test_expand_nodelist(text, expected):
    assert expand_nodelist(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("n[1-3", "unbalanced brackets"),
    ("n[3-1]", "range '3-1' goes down"),
    ("n[a-b]", "is not a list of numbers"),
    ("a,,b", "empty entry"),
])
def test_expand_nodelist_errors(text, fragment):
    assert fragment in str(pytest.raises(UserError, expand_nodelist, text).value)


def test_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert "is not N or N(xK)" in str(
        pytest.raises(UserError, expand_tasks_per_node, "2(3)").value)


def test_slurm_hosts():
    env = {"SLURM_JOB_NODELIST": "gnode[10,20-21],n01", "SLURM_TASKS_PER_NODE": "2(x3),1"}
    assert slurm_hosts(env) == [Host("gnode10", 2, "slurm"), Host("gnode20", 2, "slurm"),
                                Host("gnode21", 2, "slurm"), Host("n01", 1, "slurm")]
    # a job step's own nodes win over the allocation's
    step = dict(env, SLURM_STEP_NODELIST="n[05-06]", SLURM_STEP_TASKS_PER_NODE="1(x2)")
    assert [h.name for h in slurm_hosts(step)] == ["n05", "n06"]


def test_slurm_hosts_missing_or_inconsistent():
    assert "SLURM_JOB_NODELIST is not set" in str(
        pytest.raises(UserError, slurm_hosts, {}).value)
    assert "SLURM_TASKS_PER_NODE is not set" in str(
        pytest.raises(UserError, slurm_hosts, {"SLURM_JOB_NODELIST": "a"}).value)
    bad = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"}
    assert "gives 2 task counts but SLURM_JOB_NODELIST=n[1-3] has 3 nodes" in str(
        pytest.raises(UserError, slurm_hosts, bad).value)
