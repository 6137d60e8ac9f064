"""`singa hosts check`: exit codes and the per-host table, with real name
lookups and real ssh (which only ever fails here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from singa_cli.hosts import hosts

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "examples" / "frameworks" / "downpour.conf"


def check(*args: str):
    return CliRunner().invoke(hosts, ["check", *args])


def table(output: str) -> dict[str, list[str]]:
    """HOST -> [SLOTS, ADDRESS, STATUS] from the printed table."""
    lines = output.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("HOST "))
    rows = {}
    for line in lines[start + 1:]:
        parts = line.split(None, 3)
        if len(parts) < 4 or not parts[1].isdigit():
            break
        rows[parts[0]] = parts[1:]
    return rows


def test_localhost_only_hostfile_exits_0(tmp_path):
    hf = tmp_path / "hosts.txt"
    hf.write_text("localhost slots=2\n127.0.0.1:1  # the same machine, by address\n")
    r = check(str(hf), "--timeout", "5")
    assert r.exit_code == 0, r.output
    rows = table(r.output)
    assert rows["localhost"][0] == "2" and rows["localhost"][2] == "local"
    assert rows["127.0.0.1"] == ["1", "127.0.0.1", "local"]
    assert "2 hosts, 3 slots: all reachable" in r.output


def test_unresolvable_host_exits_1_with_the_reason(tmp_path):
    hf = tmp_path / "hosts.txt"
    hf.write_text("localhost\nno-such-host.invalid slots=2\n")
    r = check(str(hf), "--timeout", "5")
    assert r.exit_code == 1, r.output
    slots, address, status = table(r.output)["no-such-host.invalid"]
    assert (slots, address) == ("2", "-")
    assert status.startswith("cannot resolve host name 'no-such-host.invalid' (")
    assert "1 not reachable" in r.output


def test_parse_error_exits_2_with_file_and_line(tmp_path):
    hf = tmp_path / "hosts.txt"
    hf.write_text("# two hosts\nnode1\nnode2 slots=two\n")
    r = subprocess.run([sys.executable, "-c", "from singa_cli.hosts import hosts; hosts()",
                        "check", str(hf)], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"{hf}:3: host 'node2': slots must be a positive integer" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_inline_hosts_and_usage_errors():
    r = check("--hosts", "localhost:2,127.0.0.2")
    assert r.exit_code == 0, r.output
    assert set(table(r.output)) == {"localhost", "127.0.0.2"}
    r = check("--hosts", "localhost:0")
    assert r.exit_code == 2 and "--hosts: host 'localhost': slots must be" in r.output
    r = check()
    assert r.exit_code == 2 and "no hosts given" in r.output
    r = check("--hosts", "localhost", "--ssh-identity", "/nonexistent/key")
    assert r.exit_code == 2 and "--ssh-identity /nonexistent/key: no such file" in r.output


def test_conf_slots_against_processes():
    # downpour.conf: 4 worker processes + 2 server processes
    r = check("--hosts", "localhost:2,127.0.0.2:1", "--conf", str(CONF))
    assert r.exit_code == 1, r.output
    assert ("the job needs 6 processes (4 worker + 2 server processes) but the hosts have "
            "3 slots (localhost: 2, 127.0.0.2: 1); add hosts or slots, or pass "
            "--oversubscribe") in r.output
    r = check("--hosts", "localhost:4,127.0.0.2:2", "--conf", str(CONF))
    assert r.exit_code == 0, r.output
    assert f"{CONF}: 6 processes -> localhost: 0-3, 127.0.0.2: 4-5" in r.output
    r = check("--hosts", "localhost:2,127.0.0.2:1", "--conf", str(CONF), "--oversubscribe")
    assert r.exit_code == 0, r.output
    assert "localhost: 0-1,3,5, 127.0.0.2: 2,4" in r.output


def test_bad_conf_exits_2(tmp_path):
    bad = tmp_path / "job.conf"
    bad.write_text("name: 'x'\nnworker: 3\n")
    r = check("--hosts", "localhost", "--conf", str(bad))
    assert r.exit_code == 2, r.output
    assert f"{bad}:2" in r.output
