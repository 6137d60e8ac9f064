"""The ssh command builder, quoting, failure explanations, and real ssh failures.

Successful logins through a real sshd are tested with network namespaces
elsewhere; here ssh only fails (unresolvable name, closed port) or hangs on
a ProxyCommand that never answers.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from runtime.errors import UserError
from runtime.jobs.ssh import SshOptions, explain_failure, probe, remote_command, run, ssh_argv

ECHO_ARGV = [sys.executable, "-c",
             "import json, os, sys; print(json.dumps([os.getcwd(), os.environ.get('K'), "
             "os.environ.get('L'), sys.argv[1:]]))"]


def closed_port() -> int:
    """A TCP port nobody listens on: bound by the OS, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------- building ---
def test_ssh_argv_shape():
    opts = SshOptions(port=2222, identity="/k/id", config="/k/cfg", connect_timeout=4.5,
                      user="alice")
    argv = ssh_argv("node1", ["python3", "-V"], opts)
    assert argv == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-F", "/k/cfg",
                    "-p", "2222", "-i", "/k/id", "-l", "alice", "node1", "--",
                    "exec python3 -V"]


def test_ssh_argv_defaults_keep_host_key_checking():
    argv = ssh_argv("node1", ["true"], SshOptions())
    assert argv == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "node1", "--",
                    "exec true"]
    assert "StrictHostKeyChecking=no" not in " ".join(argv)
    relaxed = ssh_argv("node1", ["true"], SshOptions(strict_host_keys=False))
    assert relaxed[relaxed.index("StrictHostKeyChecking=accept-new") - 1] == "-o"
    assert "StrictHostKeyChecking=no" not in " ".join(relaxed)


def test_ssh_argv_ipv6_and_keepalive():
    argv = ssh_argv("[fd00::1]", ["true"], SshOptions(server_alive_interval=5))
    assert "ServerAliveInterval=5" in argv and argv[-3:] == ["fd00::1", "--", "exec true"]


def test_ssh_argv_refuses_option_like_host_and_bad_env_names():
    with pytest.raises(UserError, match="leading '-'"):
        ssh_argv("-oProxyCommand=touch /tmp/x", ["true"], SshOptions())
    with pytest.raises(UserError, match="environment variable name 'A B'"):
        ssh_argv("node1", ["true"], SshOptions(), env={"A B": "1"})
    with pytest.raises(ValueError):
        remote_command([])


def test_remote_command_keeps_each_piece_one_argument(tmp_path):
    """What the remote shell gets, run through `sh -c` here: a cwd and
    arguments with spaces, `;`, quotes, `$` and backticks arrive unchanged and
    nothing in them runs."""
    cwd = tmp_path / "my dir; rm -rf x"
    cwd.mkdir()
    canary = tmp_path / "canary"
    args = ["a b;c", "$HOME", "`touch %s`" % canary, "it's", "$(touch %s)" % canary, ""]
    env = {"K": "v w; touch %s" % canary, "L": "x'y\"z"}
    argv = ssh_argv("node1", ECHO_ARGV + args, SshOptions(), env=env, cwd=str(cwd))
    cmd = argv[-1]
    assert argv[-2] == "--" and cmd.startswith("cd ")
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/h"})
    assert json.loads(out.stdout) == [str(cwd), env["K"], env["L"], args]
    assert not canary.exists()


def test_remote_command_without_cwd_or_env():
    assert remote_command(["echo", "a b"]) == "exec echo 'a b'"
    assert remote_command(["x"], env={"A": "1"}, cwd="/w") == "cd /w && exec env A=1 x"


def test_options_check(tmp_path):
    SshOptions().check()
    with pytest.raises(UserError, match="--ssh-identity /nonexistent/key: no such file"):
        SshOptions(identity="/nonexistent/key").check()
    with pytest.raises(UserError, match="--ssh-port 70000"):
        SshOptions(port=70000).check()


# ------------------------------------------------------------ diagnosis ---
CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:PYS5/AzRWKkaHGEVo6jbrZgRsbsDDfncOjnFniGxkeQ.
Please contact your system administrator.
Add correct host key in /home/u/.ssh/known_hosts to get rid of this message.
Offending ED25519 key in /home/u/.ssh/known_hosts:7
  remove with:
  ssh-keygen -f "/home/u/.ssh/known_hosts" -R "node2"
Host key for node2 has changed and you have requested strict checking.
Host key verification failed.
"""


@pytest.mark.parametrize("stderr, opts, expected", [
    ("ssh: Could not resolve hostname node9: Name or service not known\n", None,
     "cannot resolve host name 'node9' (Name or service not known): check its spelling "
     "in the hostfile, DNS or /etc/hosts"),
    ("ssh: Could not resolve hostname node9: Temporary failure in name resolution\n", None,
     "(Temporary failure in name resolution)"),
    ("ssh: connect to host 10.0.0.2 port 2222: Connection refused\n", None,
     "connection refused by node9 (10.0.0.2) on port 2222: is sshd running on port 2222?"),
    ("ssh: connect to host 10.0.0.2 port 22: Connection timed out\n", None,
     "timed out connecting to node9 (10.0.0.2) port 22: the host is down"),
    ("Connection to 10.0.0.2 port 22 timed out\n", None,
     "timed out connecting to node9 (10.0.0.2) port 22"),
    ("Connection timed out during banner exchange\n", None,
     "timed out talking to node9: the connection was made but no ssh server answered"),
    ("ssh: connect to host 10.0.0.2 port 22: No route to host\n", None,
     "no route to host node9 (10.0.0.2)"),
    ("ssh: connect to host 10.0.0.2 port 22: Network is unreachable\n", None,
     "network unreachable for node9 (10.0.0.2)"),
    ("bob@node9: Permission denied (publickey).\n", None,
     "permission denied on node9 for user bob (server accepts: publickey); tried the "
     "default keys (~/.ssh/id_*) and the ssh agent: add the public key"),
    ("Warning: Identity file /k/id not accessible: No such file or directory.\n"
     "bob@node9: Permission denied (publickey,password).\n",
     SshOptions(identity="/k/id", user="carol"),
     "permission denied on node9 for user carol (server accepts: publickey,password); tried "
     "the identity /k/id (the identity file /k/id could not be read: No such file or "
     "directory)"),
    ("bob@node9: Permission denied (password,keyboard-interactive).\n", None,
     "accepts only password,keyboard-interactive, which batch mode cannot type"),
    ("Host key verification failed.\n", SshOptions(port=2222),
     "the host key of node9 is not in known_hosts, and ssh in batch mode cannot ask: record "
     "it with `ssh-keyscan -p 2222 node9 >> ~/.ssh/known_hosts`"),
    (CHANGED, None,
     "the host key of node9 has changed since it was recorded (the old key is "
     "/home/u/.ssh/known_hosts:7): someone may be intercepting the connection"),
    ("@@@@\n@ WARNING: UNPROTECTED PRIVATE KEY FILE! @\n@@@@\n"
     "Load key \"/k/id\": bad permissions\nbob@node9: Permission denied (publickey).\n", None,
     "permission denied on node9 for user bob"),
    ("Load key \"/k/id\": bad permissions\n", None,
     "ssh ignores /k/id because others can read it: run `chmod 600 /k/id`"),
    ("Can't open user config file /k/cfg: No such file or directory\n", None,
     "cannot open the ssh config file /k/cfg: No such file or directory"),
    ("kex_exchange_identification: Connection closed by remote host\n"
     "Connection closed by 10.0.0.2 port 22\n", None,
     "node9 closed the connection during the ssh handshake"),
    ("something new went wrong\nand this is the last line\n", None,
     "ssh to node9 failed (exit 255): and this is the last line"),
    ("", None, "ssh to node9 failed (exit 255): no message from ssh"),
])
def test_explain_failure(stderr, opts, expected):
    assert expected in explain_failure("node9", 255, stderr, opts=opts)


def test_explain_failure_changed_key_gives_the_fix():
    msg = explain_failure("node2", 255, CHANGED, opts=SshOptions(port=2222))
    assert "`ssh-keygen -R node2`" in msg
    assert "`ssh-keyscan -p 2222 node2 >> ~/.ssh/known_hosts`" in msg


def test_explain_failure_of_the_remote_command():
    assert explain_failure("node9", 127, "sh: 1: python3: not found\n") == (
        "the command on node9 exited with status 127: sh: 1: python3: not found")


# ------------------------------------------------------------ real ssh ---
def test_probe_unresolvable_name():
    ok, why = probe("no-such-host.invalid", SshOptions(connect_timeout=5), timeout=20)
    assert not ok
    assert why.startswith("cannot resolve host name 'no-such-host.invalid' (")


def test_probe_closed_port_is_refused():
    port = closed_port()
    ok, why = probe("127.0.0.1", SshOptions(port=port, connect_timeout=5), timeout=20,
                    local_shortcut=False)
    assert not ok
    assert why == (f"connection refused by 127.0.0.1 (127.0.0.1) on port {port}: is sshd "
                   f"running on port {port}? (give another port with --ssh-port)")


def test_probe_local_host_needs_no_ssh():
    # a closed port would fail, so success means ssh was not used
    assert probe("localhost", SshOptions(port=closed_port()), timeout=5) == (True, "local")


def test_run_timeout_kills_the_ssh_session(tmp_path):
    """An ssh that hangs (here a ProxyCommand that never speaks) is stopped,
    with its children, and the probe says so."""
    pidfile = tmp_path / "proxy.pid"
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host *\n  ProxyCommand sh -c 'echo $$ > {pidfile}; exec sleep 60'\n")
    opts = SshOptions(config=str(cfg), connect_timeout=30)
    with pytest.raises(subprocess.TimeoutExpired):
        run("node-behind-proxy.invalid", ["true"], opts, timeout=1.5)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the ProxyCommand (pid {pid}) survived the timeout")
    ok, why = probe("node-behind-proxy.invalid", opts, timeout=1)
    assert not ok and why.startswith("no answer from node-behind-proxy.invalid within 1 s")


def test_run_captures_output_of_a_failing_ssh(tmp_path):
    r = run("127.0.0.1", ["true"], SshOptions(port=closed_port()), timeout=20)
    assert r.returncode == 255
    assert b"Connection refused" in r.stderr
    assert r.args[0] == "ssh"


def test_signalling_connects_with_a_short_timeout():
    from runtime.jobs.ssh import SIGNAL_CONNECT_TIMEOUT_S, SshOptions, ssh_argv

    assert "ConnectTimeout=3" in ssh_argv("node2", ["true"], SshOptions().for_signals())
    assert SshOptions(connect_timeout=1.0).for_signals().connect_timeout == 1.0
    assert SshOptions(port=2222).for_signals() == SshOptions(
        port=2222, connect_timeout=SIGNAL_CONNECT_TIMEOUT_S)
