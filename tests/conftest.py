"""Session fixtures: one real PostgreSQL and one JetStream nats-server for all tests.

The tests always start their own, under a temporary folder; DATABASE_URL and NATS_URL
are ignored. Their data is deleted after a passing run unless KEEP_TEST_DATA is set.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from services.common import logging as logs
from services.common.localstack import LocalStack
from tests.support.stack import TestStack

# Services started by the tests generate their keys under the session's folder.
os.environ["DEV_MODE"] = "1"
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="consortium-tests-"))
LOG_DIR = _SESSION_DIR / "logs"
LOG_DIR.mkdir(parents=True, exist_ok=True)
_LOG_STREAM = open(LOG_DIR / "pytest.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115
logs.configure("INFO", stream=_LOG_STREAM)


@pytest.fixture(scope="session")
def stack() -> TestStack:
    data_dir = _SESSION_DIR / "data"
    local = LocalStack.start(data_dir)
    try:
        yield TestStack(local, data_dir, LOG_DIR)
    finally:
        local.stop()


@pytest.fixture(scope="session")
def log_dir() -> Path:
    return LOG_DIR


def pytest_collection_modifyitems(session, config, items):
    # The log-hygiene check reads what every other test wrote, so it runs last.
    last = [i for i in items if i.get_closest_marker("runs_last")]
    items[:] = [i for i in items if not i.get_closest_marker("runs_last")] + last


def pytest_configure(config):
    config.addinivalue_line("markers", "runs_last: run after every other test")


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and not os.environ.get("KEEP_TEST_DATA"):
        shutil.rmtree(_SESSION_DIR / "data", ignore_errors=True)
