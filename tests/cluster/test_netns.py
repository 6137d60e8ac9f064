"""The SshCluster fixture: namespaces are separate hosts, reachable over real ssh, torn down fully.

Needs root (skips otherwise). A 2-host cluster comes up in well under a second here.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .netns import SshCluster

REPO = Path(__file__).resolve().parents[2]
# Starts `sleep` in a new session that outlives the ssh session; prints its pid.
DETACHED_SLEEP = ["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"]


def _dead(pid: int) -> bool:
    """True once pid has exited (a zombie counts: nothing here reaps orphans promptly)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def _assert_torn_down(namespaces: list[str], links: list[str], pids: list[int]) -> None:
    assert not set(namespaces) & _netns_names()
    assert not set(links) & _link_names()
    assert [p for p in pids if not _dead(p)] == []


def test_each_host_has_its_own_address(ssh_cluster: SshCluster) -> None:
    assert len(ssh_cluster.addresses) == 2
    for i, addr in enumerate(ssh_cluster.addresses):
        res = ssh_cluster.ssh(i, ["ip", "-4", "-o", "addr", "show"])
        assert res.returncode == 0, res.stderr
        # Inside the namespace only lo and eth0 exist, and eth0 holds this host's address.
        inet = {line.split()[1]: line.split()[3] for line in res.stdout.splitlines()}
        assert inet == {"lo": "127.0.0.1/8", "eth0": f"{addr}/24"}
        res = ssh_cluster.ssh(i, ["hostname", "-I"])
        assert res.stdout.split() == [addr]


def test_hostfile_lists_every_host(ssh_cluster: SshCluster) -> None:
    path = ssh_cluster.hostfile(slots=3)
    assert path.read_text().splitlines() == [f"{a} slots=3" for a in ssh_cluster.addresses]


def test_argv_is_quoted_and_input_passed(ssh_cluster: SshCluster) -> None:
    res = ssh_cluster.ssh(0, ["printf", "%s|", "a b", "$HOME", "-x"])
    assert res.stdout == "a b|$HOME|-x|"
    res = ssh_cluster.ssh(1, ["cat"], input="over stdin\n")
    assert res.stdout == "over stdin\n"


def test_host_reaches_other_host_and_root_namespace(ssh_cluster: SshCluster) -> None:
    # host 0 -> host 1: host 1's sshd greets with its banner.
    banner = ("import socket; s = socket.create_connection((%r, 22), timeout=5); "
              "print(s.recv(64).decode().strip())" % ssh_cluster.addresses[1])
    res = ssh_cluster.ssh(0, [sys.executable, "-c", banner])
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("SSH-2.0-")

    # host 0 -> root namespace (where a job master runs), on an OS-picked port.
    with socket.create_server((ssh_cluster.bridge_address, 0)) as listener:
        port = listener.getsockname()[1]
        send = ("import socket; s = socket.create_connection((%r, %d), timeout=5); "
                "s.sendall(b'hello from host 0'); s.close()" % (ssh_cluster.bridge_address, port))
        res = ssh_cluster.ssh(0, [sys.executable, "-c", send])
        assert res.returncode == 0, res.stderr
        listener.settimeout(10)
        conn, peer = listener.accept()
        with conn:
            assert peer[0] == ssh_cluster.addresses[0]
            assert conn.recv(64) == b"hello from host 0"


def test_host_key_checking_is_on(ssh_cluster: SshCluster, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    res = subprocess.run(
        ["ssh", "-F", str(ssh_cluster.ssh_config), "-o", f"UserKnownHostsFile={empty}",
         "--", ssh_cluster.addresses[0], "true"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr


def test_pids_lists_detached_process_until_killed(ssh_cluster: SshCluster) -> None:
    res = ssh_cluster.ssh(0, DETACHED_SLEEP)
    assert res.returncode == 0, res.stderr
    pid = int(res.stdout)
    try:
        # its own process group, as a launcher would make it (once setsid has run)
        assert _wait(lambda: os.getpgid(pid) == pid)
        # The ssh session is over; the process lives on host 0 and only there.
        assert pid in ssh_cluster.pids(0)
        assert pid not in ssh_cluster.pids(1)
        assert ssh_cluster.sshd_pid(0) not in ssh_cluster.pids(0)
    finally:
        os.killpg(pid, signal.SIGKILL)
    assert _wait(lambda: pid not in ssh_cluster.pids(0))
    assert ssh_cluster.wait_idle(0) == []


def test_close_removes_everything(make_ssh_cluster) -> None:
    cluster = make_ssh_cluster(2)
    sleeper = int(cluster.ssh(1, DETACHED_SLEEP).stdout)
    sshds = [cluster.sshd_pid(i) for i in range(2)]
    assert not _dead(sleeper) and set(cluster.namespaces) <= _netns_names()
    cluster.close()
    _assert_torn_down(cluster.namespaces, [cluster.bridge_name, *cluster.veth_names],
                      [*sshds, sleeper])
    cluster.close()  # idempotent


@pytest.mark.usefixtures("make_ssh_cluster")  # for its skip where namespaces are unavailable
def test_interpreter_exit_tears_down_a_crashed_test(tmp_path: Path) -> None:
    script = (
        "import json, pathlib, sys\n"
        "from tests.cluster.netns import SshCluster\n"
        "c = SshCluster(1, pathlib.Path(sys.argv[1]))\n"
        f"sleeper = int(c.ssh(0, {DETACHED_SLEEP!r}).stdout)\n"
        "print(json.dumps({'ns': c.namespaces, 'links': [c.bridge_name, *c.veth_names],\n"
        "                  'pids': [c.sshd_pid(0), sleeper]}), flush=True)\n"
        "raise RuntimeError('test crashed')\n")
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "crash")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "RuntimeError: test crashed" in res.stderr, res.stderr
    made = json.loads(res.stdout)
    _assert_torn_down(made["ns"], made["links"], made["pids"])
