"""The whole system as separate processes on the session's PostgreSQL and NATS."""
from __future__ import annotations

import pytest

from tests.integration.notify.notify_support import _retire_other_tests_deliveries


@pytest.fixture(scope="module", autouse=True)
async def fresh_streams(stack):
    # The services here consume every event of their kind; other modules' leftovers
    # (and their pending deliveries) would otherwise reach this module's fakes.
    await stack.reset_streams()
    await _retire_other_tests_deliveries(stack)


@pytest.fixture(scope="session")
def system_dir(stack):
    """The services must sign and verify with the session's dev keys (stack.metadata),
    so they share its data folder; their logs go where the PII scan reads them."""
    logs = stack.data_dir / "logs"
    if not logs.exists():
        logs.symlink_to(stack.log_dir, target_is_directory=True)
    return stack.data_dir
