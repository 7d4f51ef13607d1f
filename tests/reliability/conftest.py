"""A private PostgreSQL and nats-server for the reliability tests.

These tests kill services, restart both servers and load them; on servers of their own
they cannot disturb the session's long-lived services (their pools, durable consumers
and outbox relays), and no other test's relay or consumer can take their events.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from services.common.localstack import LocalStack
from tests.support.stack import REPO, TestStack

REPORT = REPO / "reports" / "reliability.jsonl"


@pytest.fixture(scope="package")
def rstack(log_dir) -> TestStack:
    data_dir = Path(tempfile.mkdtemp(prefix="consortium-reliability-"))
    local = LocalStack.start(data_dir)
    try:
        yield TestStack(local, data_dir, log_dir)
    finally:
        local.stop()
        if not os.environ.get("KEEP_TEST_DATA"):
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def report(request):
    """Print a figure and append it to reports/reliability.jsonl for the lead to quote."""
    def record(figure: str, value) -> None:
        print(f"[{request.node.name}] {figure} = {value}")
        REPORT.parent.mkdir(exist_ok=True)
        with REPORT.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"test": request.node.name, "figure": figure, "value": value,
                                  "at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
                                 ensure_ascii=False) + "\n")
    return record


@pytest.fixture(autouse=True)
async def fresh_streams(rstack):
    # Consumers start from the beginning of a stream: each test sees only its own events.
    await rstack.reset_streams()
