"""The screenshots of docs/ui.md: each page of `singa ui`, on real jobs.

    python tools/ui_screenshots.py [--out docs/img]

In a temporary SINGA_HOME it submits, with the CLI, tiny MLPs (the test
suite's data): one that finishes, a sweep of three learning rates, one that
trains on with two asynchronous worker groups (Downpour: staleness), and
one queued after it (--after). Then it starts `singa ui --port 0`, opens
each page in headless Chromium (selenium + chromium-driver) and saves
ui-jobs.png, ui-job.png, ui-log.png and ui-compare.png into --out. Every
job is stopped at the end.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _shot(driver, path: Path, height: int | None = None) -> None:
    full = driver.execute_script("return Math.max(document.documentElement.scrollHeight, "
                                 "document.body.scrollHeight)")
    # the window's size counts the browser's own bars, even headless
    bars = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(1280, min(height or full, 3600) + bars)
    time.sleep(0.8)  # charts follow the new width
    driver.save_screenshot(str(path))
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    from tests.ui.browser import UiServer, chrome, conf, missing, singa, state, submit, wait_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    a = ap.parse_args()
    why = missing()
    if why:
        sys.exit(f"ui_screenshots: {why}")
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        (home / "hosts").write_text("localhost slots=8\n")
        done = submit(home, conf(work, "mlp", steps=300, test_freq=50, disp=10, ckpt=100))
        r = singa(home, "sweep", str(conf(work, "lr", steps=200, test_freq=50, disp=20)),
                  "--set", "updater.learning_rate.base_lr=0.2,0.05,0.01")
        assert r.returncode == 0, r.stderr
        array = int(re.search(r"array (\d+)", r.stdout).group(1))
        p = conf(work, "downpour", steps=10**7, test_freq=2000, disp=200)
        p.write_text(p.read_text().replace(
            f'cluster {{ workspace: "{work}/downpour.ws" }}',
            f'cluster {{ workspace: "{work}/downpour.ws" nworker_groups: 2 nserver_groups: 1 '
            'server_worker_separate: true }').replace("base_lr: 0.05", "base_lr: 0.025"))
        run = submit(home, p)
        r = singa(home, "submit", "--detach", "--after", str(run), "--name", "after-downpour",
                  str(conf(work, "next", steps=100, test_freq=50)))
        assert r.returncode == 0, r.stderr
        wait_for(lambda: state(home, done) == "SUCCEEDED", 120, "the first job")
        wait_for(lambda: state(home, run) == "RUNNING", 120, "the async job")
        server = UiServer(home)
        driver = chrome(1280, 900)
        try:
            time.sleep(6)  # some curve for the async job
            driver.get(f"{server.url}/?token={server.token}")
            wait_for(lambda: driver.execute_script("return window.__jobs && window.__jobs.renders"),
                     20, "table")
            _shot(driver, a.out / "ui-jobs.png", 520)
            driver.get(f"{server.url}/jobs/{run}")
            wait_for(lambda: driver.execute_script("return window.__plots.staleness_mean"), 30, "curves")
            wait_for(lambda: driver.execute_script(
                "const i = document.querySelector('#graph img'); return i && i.naturalWidth"), 60, "graph")
            _shot(driver, a.out / "ui-job.png")
            driver.get(f"{server.url}/jobs/{run}/log")
            wait_for(lambda: driver.execute_script("return window.__log.lines > 20"), 20, "log")
            _shot(driver, a.out / "ui-log.png", 700)
            wait_for(lambda: all(state(home, j) in ("SUCCEEDED", "FAILED")
                                 for j in _array_jobs(home, array)), 120, "the sweep")
            driver.get(f"{server.url}/compare?array={array}")
            wait_for(lambda: driver.execute_script(
                "return window.__plots.compare && window.__plots.compare.labels.length == 3"), 30, "compare")
            wait_for(lambda: driver.execute_script(
                "return document.querySelectorAll('#sweep-table tbody tr').length == 3"), 30, "the table")
            driver.execute_script("document.querySelector('#sweep-table th[data-sort=accuracy]').click()")
            _shot(driver, a.out / "ui-compare.png")
        finally:
            driver.quit()
            server.stop()
            from runtime.jobs import jobdb
            from runtime.jobs.kill import kill_job

            with jobdb.JobDB(home) as reg:
                for j in reg.jobs(jobdb.ACTIVE):
                    kill_job(reg, j.id, grace=1.0, reason="end of ui_screenshots")


def _array_jobs(home: Path, array: int) -> list[int]:
    from runtime.jobs import jobdb

    with jobdb.JobDB(home) as reg:
        return [j.id for j in reg.array_jobs(array)]


if __name__ == "__main__":
    main()
