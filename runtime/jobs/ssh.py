"""Running a command on another host with plain OpenSSH, and saying why it failed.

    argv = ssh_argv("node2", ["python3", "-m", "runtime.train.node", "--rank", "3"], opts,
                    env={"SINGA_JOB": "17"}, cwd="/home/u/singa")
    # ssh -o BatchMode=yes -o ConnectTimeout=10 node2 -- \
    #     "cd /home/u/singa && exec env SINGA_JOB=17 python3 -m runtime.train.node --rank 3"

Contract:
- The local side is always an argv list (never `shell=True`). The remote
  side is one string for the remote login shell (POSIX sh syntax), in which
  every given piece is `shlex.quote`d, so a path with spaces or `;` reaches
  the remote program as one argument and no given text runs as shell code.
- Batch mode always: ssh never prompts (a prompt would hang a launch); a
  missing key or unknown host key fails at once with a message that
  `explain_failure` turns into a sentence with the fix.
- Host-key checking stays on; `strict_host_keys=False` means
  `StrictHostKeyChecking=accept-new` (record a new host's key, still refuse a
  changed one), never `no`.
- Exit status 255 is ssh's own failure; any other status is the remote
  command's.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass

from runtime.errors import UserError
from runtime.jobs.hostfile import is_local

SSH_FAILED = 255  # ssh's exit status for its own errors (connect, auth, host key)
#: ssh's connect timeout when signalling a job's processes (`SshOptions.for_signals`).
SIGNAL_CONNECT_TIMEOUT_S = 3.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SshOptions:
    """How to reach the hosts. None means "ssh's default (or the ssh config's)"."""

    port: int | None = None
    identity: str | None = None
    config: str | None = None
    connect_timeout: float = 10.0
    user: str | None = None
    strict_host_keys: bool = True
    # seconds between keep-alives on a long session (a launched process), so a
    # dead host ends the session instead of leaving it open forever
    server_alive_interval: int | None = None

    def for_signals(self) -> SshOptions:
        """These options with a connect timeout of `SIGNAL_CONNECT_TIMEOUT_S` at
        most, for signalling a job's processes: the job is being stopped, and a
        host cut off must not hold that up for the launch's timeout."""
        return dataclasses.replace(self, connect_timeout=min(self.connect_timeout,
                                                             SIGNAL_CONNECT_TIMEOUT_S))

    def check(self) -> None:
        """Raise UserError if a given file is missing or the port is out of range."""
        if self.port is not None and not 1 <= self.port <= 65535:
            raise UserError(f"--ssh-port {self.port}: expected a TCP port, 1..65535")
        for flag, path in (("--ssh-identity", self.identity), ("--ssh-config", self.config)):
            if path is not None and not os.path.isfile(path):
                raise UserError(f"{flag} {path}: no such file")
        if self.connect_timeout <= 0:
            raise UserError(f"ssh connect timeout {self.connect_timeout}: expected seconds > 0")


def remote_command(remote_argv: list[str], *, env: dict[str, str] | None = None,
                   cwd: str | None = None) -> str:
    """The string the remote shell runs: `cd CWD && exec env K=V ... ARGV...`."""
    if not remote_argv:
        raise ValueError("remote_argv is empty: expected the program and its arguments")
    parts = []
    if cwd:
        # a leading '-' would read as an option of cd
        parts.append(f"cd {shlex.quote(cwd if not cwd.startswith('-') else './' + cwd)} && ")
    parts.append("exec ")
    if env:
        bad = [k for k in env if not _ENV_NAME.match(k)]
        if bad:
            raise UserError(f"environment variable name {bad[0]!r} is not valid; expected "
                            "letters, digits and '_', not starting with a digit")
        parts.append("env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " ")
    parts.append(" ".join(shlex.quote(a) for a in remote_argv))
    return "".join(parts)


def ssh_argv(host: str, remote_argv: list[str], opts: SshOptions, *,
             env: dict[str, str] | None = None, cwd: str | None = None) -> list[str]:
    """The local argv that runs `remote_argv` on `host` (see the module docstring)."""
    if not host or host.startswith("-"):
        raise UserError(f"'{host}' is not a host name (a leading '-' would read as an "
                        "ssh option)")
    # `--` after the host: ssh parses options after the host name too
    return [*client_argv(opts), host.strip("[]"), "--",
            remote_command(remote_argv, env=env, cwd=cwd)]


def client_argv(opts: SshOptions) -> list[str]:
    """`ssh` and its options from `opts` (batch mode, timeouts, config, port,
    identity, user), without a host: what `ssh_argv` starts with, and what
    another program that runs ssh itself (mpirun's `plm_rsh_agent`) is given."""
    argv = ["ssh", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, math.ceil(opts.connect_timeout))}"]
    if not opts.strict_host_keys:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    if opts.server_alive_interval:
        argv += ["-o", f"ServerAliveInterval={opts.server_alive_interval}",
                 "-o", "ServerAliveCountMax=3"]
    if opts.config:
        argv += ["-F", opts.config]
    if opts.port is not None:
        argv += ["-p", str(opts.port)]
    if opts.identity:
        argv += ["-i", opts.identity]
    if opts.user:
        argv += ["-l", opts.user]
    return argv


def run(host: str, remote_argv: list[str], opts: SshOptions, *, timeout: float,
        input: bytes | None = None, env: dict[str, str] | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `remote_argv` on `host` and capture its stdout and stderr (bytes).

    ssh runs in its own session; after `timeout` seconds that session (ssh and
    any ProxyCommand it started) is killed and `subprocess.TimeoutExpired` is
    raised. Without `input`, stdin is /dev/null so ssh never reads the terminal.
    """
    argv = ssh_argv(host, remote_argv, opts, env=env, cwd=cwd)
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started, by its id
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild left the session, holding the pipes
            proc.wait()
            out, err = b"", b""
        raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# ---------------------------------------------------------- diagnosis ---
def _last_line(stderr: str) -> str:
    lines = [l.strip() for l in stderr.splitlines()
             if l.strip() and not l.startswith(("Warning: Permanently added", "@@@"))]
    return lines[-1] if lines else ""


def _keyscan(host: str, port: str | None) -> str:
    p = f"-p {port} " if port and port != "22" else ""
    return f"ssh-keyscan {p}{shlex.quote(host)} >> ~/.ssh/known_hosts"


def explain_failure(host: str, returncode: int, stderr: str, *,
                    opts: SshOptions | None = None) -> str:
    """One sentence saying why running a command on `host` failed, with the fix,
    read from OpenSSH's stderr. `opts` (if given) names the port, user and
    identity that were tried."""
    stderr = stderr or ""
    last = _last_line(stderr)
    if returncode != SSH_FAILED:
        return (f"the command on {host} exited with status {returncode}"
                + (f": {last}" if last else ""))
    port = str(opts.port) if opts and opts.port else None
    m = re.search(r"Could not resolve hostname (\S+?): (.+)", stderr)
    if m:
        return (f"cannot resolve host name '{m.group(1)}' ({m.group(2).strip()}): check its "
                "spelling in the hostfile, DNS or /etc/hosts")
    m = re.search(r"connect to host (\S+) port (\d+): (.+)", stderr)
    if m:
        addr, p, why = m.group(1), m.group(2), m.group(3).strip()
        low = why.lower()
        if "refused" in low:
            return (f"connection refused by {host} ({addr}) on port {p}: is sshd running "
                    f"on port {p}? (give another port with --ssh-port)")
        if "timed out" in low:
            return (f"timed out connecting to {host} ({addr}) port {p}: the host is down, "
                    "a firewall drops the packets, or the address is wrong")
        if "no route" in low:
            return (f"no route to host {host} ({addr}): it is down or on a network this "
                    "machine cannot reach")
        if "unreachable" in low:
            return f"network unreachable for {host} ({addr}): no route to its network"
        return f"cannot connect to {host} ({addr}) port {p}: {why}"
    m = re.search(r"Connection to (\S+) port (\d+) timed out", stderr)
    if m:
        return (f"timed out connecting to {host} ({m.group(1)}) port {m.group(2)}: the host "
                "is down, a firewall drops the packets, or the address is wrong")
    if re.search(r"timed out", stderr, re.I):
        return (f"timed out talking to {host}: the connection was made but no ssh server "
                "answered in time (host overloaded, or not sshd on that port)")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        off = re.search(r"Offending \S+ key in (\S+):(\d+)", stderr)
        where = f" (the old key is {off.group(1)}:{off.group(2)})" if off else ""
        return (f"the host key of {host} has changed since it was recorded{where}: someone "
                "may be intercepting the connection, or the host was reinstalled; if the "
                f"change is expected, remove the old key with `ssh-keygen -R {host}` and "
                f"record the new one with `{_keyscan(host, port)}` after checking its "
                "fingerprint")
    if "Host key verification failed" in stderr:
        return (f"the host key of {host} is not in known_hosts, and ssh in batch mode "
                f"cannot ask: record it with `{_keyscan(host, port)}` after checking its "
                "fingerprint (or pass --ssh-accept-new to record it on first use)")
    m = re.search(r"(?:(\S+)@\S+: )?Permission denied \(([^)]*)\)", stderr)
    if m:
        user = (opts.user if opts and opts.user else None) or m.group(1) or "your user"
        ident = (f"the identity {opts.identity}" if opts and opts.identity
                 else "the default keys (~/.ssh/id_*) and the ssh agent")
        methods = m.group(2)
        hint = ("add the public key to ~/.ssh/authorized_keys of that user on the host "
                "(ssh-copy-id), or give the key with --ssh-identity and the user with "
                "--ssh-user")
        if "publickey" not in methods:
            hint = (f"the host accepts only {methods}, which batch mode cannot type; "
                    "enable key login on it")
        unreadable = re.search(r"Identity file (\S+) not accessible: ([^.\n]+)", stderr)
        extra = (f" (the identity file {unreadable.group(1)} could not be read: "
                 f"{unreadable.group(2)})") if unreadable else ""
        return (f"permission denied on {host} for user {user} (server accepts: {methods}); "
                f"tried {ident}{extra}: {hint}")
    if "UNPROTECTED PRIVATE KEY FILE" in stderr or "bad permissions" in stderr:
        m = re.search(r'Load key "([^"]+)": bad permissions', stderr)
        key = m.group(1) if m else "the private key"
        return f"ssh ignores {key} because others can read it: run `chmod 600 {key}`"
    m = re.search(r"Can't open user config file (\S+): (.+)", stderr)
    if m:
        return f"cannot open the ssh config file {m.group(1)}: {m.group(2).strip()}"
    if re.search(r"Bad configuration option|Bad port|bad owner or permissions", stderr, re.I):
        return f"ssh rejected its configuration: {last}"
    if re.search(r"Connection (closed|reset) by|kex_exchange_identification", stderr):
        return (f"{host} closed the connection during the ssh handshake: sshd refuses new "
                "connections (MaxStartups, a TCP wrapper or firewall) or that port is not sshd"
                + (f" ({last})" if last else ""))
    if "Too many authentication failures" in stderr:
        return (f"{host}: too many authentication failures (the agent offers too many keys); "
                "give the key with --ssh-identity")
    return f"ssh to {host} failed (exit 255): {last or 'no message from ssh'}"


def probe(host: str, opts: SshOptions, timeout: float, *,
          local_shortcut: bool = True) -> tuple[bool, str]:
    """Whether `host` can run a command: (True, "local") for this machine
    (no ssh needed; `local_shortcut=False` asks ssh anyway), (True, "ok")
    when `ssh host true` works, else (False, the reason from `explain_failure`)."""
    if local_shortcut and is_local(host):
        return True, "local"
    try:
        r = run(host, ["true"], opts, timeout=timeout)
    except FileNotFoundError:
        return False, "the ssh client is not installed (no 'ssh' on PATH): install OpenSSH"
    except subprocess.TimeoutExpired:
        return False, (f"no answer from {host} within {timeout:g} s (ssh stopped): the host "
                       "may be down, or an ssh prompt or a slow login is blocking")
    if r.returncode == 0:
        return True, "ok"
    return False, explain_failure(host, r.returncode,
                                  r.stderr.decode("utf-8", "replace"), opts=opts)
