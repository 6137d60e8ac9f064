"""Headless Chromium through selenium (Debian's chromium + chromium-driver),
and `singa ui` started as a user starts it, for the dashboard's tests and
tools/ui_screenshots.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; it is in singa's test extras)"
    if not any(shutil.which(c) for c in CHROMIUM):
        return "chromium is not installed (apt-get install chromium; bin/setup installs it as root)"
    if not shutil.which("chromedriver"):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


def chrome(width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium driven by chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    binary = next((shutil.which(c) for c in CHROMIUM if shutil.which(c)), None)
    if binary:
        opts.binary_location = binary
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


class UiServer:
    """`singa ui --port 0` on the registry in `home`, in a subprocess."""

    def __init__(self, home: Path, *args: str):
        env = dict(os.environ, SINGA_HOME=str(home),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "singa_cli.main", "ui", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, cwd=str(home))
        self.banner: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        url = None
        while not (url and self.banner[-1].startswith("Ctrl-C")) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("singa ui exited: " + "".join(self.banner))
            self.banner.append(line)
            m = re.search(r"(http://\S+)/\?token=(\S+)", line)
            if m:
                url = m.group(1)
                self.token = m.group(2)
        if url is None:
            raise RuntimeError("singa ui printed no URL: " + "".join(self.banner))
        self.url = url
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as e:  # noqa: BLE001 - a page still loading: try again
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


# -- real jobs, submitted with the CLI ---------------------------------------------------------

def conf(tmp: Path, name: str, steps: int, test_freq: int, disp: int = 5, ckpt: int = 0) -> Path:
    from tests.test_training import make_conf

    p = make_conf(tmp, f"{name}.conf", steps=steps, test_freq=test_freq, ckpt_freq=ckpt,
                  workspace=str(tmp / f"{name}.ws"))
    p.write_text(p.read_text().replace("disp_freq: 5", f"disp_freq: {disp}"))
    return p


def singa(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SINGA_HOME=str(home),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "singa_cli.main", *args], cwd=home.parent, env=env,
                          capture_output=True, text=True, timeout=120)


def submit(home: Path, conf: Path) -> int:
    r = singa(home, "submit", "--detach", str(conf))
    assert r.returncode == 0, r.stderr
    return int(re.search(r"Submitted job (\d+)", r.stdout).group(1))


def state(home: Path, job_id: int, fresh: bool = True) -> str:
    from runtime.jobs import jobdb

    with jobdb.JobDB(home) as reg:
        return reg.reconcile(reg.job(job_id)).state if fresh else reg.job(job_id).state
