"""Every test runs against its own job registry: `SINGA_HOME` points into a
temporary directory for the session, never at the user's ~/.singa."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _singa_home(tmp_path_factory):
    old = os.environ.get("SINGA_HOME")
    os.environ["SINGA_HOME"] = str(tmp_path_factory.mktemp("singa-home"))
    yield
    if old is None:
        os.environ.pop("SINGA_HOME", None)
    else:
        os.environ["SINGA_HOME"] = old
