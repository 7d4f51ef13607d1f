"""A real service whose outbox relay SIGKILLs the process right after the Nth PubAck.

The broker then holds the event and the outbox does not know it was sent: the worst
moment for a relay. Everything else is the unmodified service.
Usage: FAULT_KILL_AFTER_PUBLISHES=N python -m tests.support.faulty_service <service>
(unset or 0: never killed); FAULT_COUNTED_SUBJECTS=prefix counts only those publishes.
"""
from __future__ import annotations

import importlib
import os
import sys

from services.common import app, outbox
from tests.support.relay_process import _KillingJetStream


class _BrokerWithKillingPublish:
    def __init__(self, broker, kill_after: int) -> None:
        self._broker = broker
        self.js = _KillingJetStream(broker.js, kill_after, os.environ.get("FAULT_COUNTED_SUBJECTS", ""))

    def __getattr__(self, name: str):
        return getattr(self._broker, name)


def _relay_class(kill_after: int) -> type[outbox.OutboxRelay]:
    class KillingRelay(outbox.OutboxRelay):
        def __init__(self, pool, broker, *args, **kwargs) -> None:
            # Only the relay's publishes count; consumers keep the real broker.
            super().__init__(pool, _BrokerWithKillingPublish(broker, kill_after), *args, **kwargs)
    return KillingRelay


if __name__ == "__main__":
    service = sys.argv[1]
    kill_after = int(os.environ.get("FAULT_KILL_AFTER_PUBLISHES") or 0)
    if kill_after:
        app.OutboxRelay = _relay_class(kill_after)  # type: ignore[misc]
    build = importlib.import_module(f"services.{service}.entrypoints.app").build
    app.main(service, build, ["serve"])
