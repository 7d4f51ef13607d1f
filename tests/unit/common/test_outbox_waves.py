"""The relay's pipelined publishing: an aggregate's events go out one after another's
acknowledgement, other aggregates' alongside; a failure holds back only its aggregate."""
from __future__ import annotations

import asyncio

from services.common.outbox import OutboxRelay


class _Js:
    """Stands in for JetStream: a PubAck arrives on the next turn of the loop."""

    def __init__(self, refuse: set[str] = frozenset()) -> None:
        self.log: list[str] = []
        self.refuse = refuse

    async def publish_async(self, subject: str, payload: bytes, headers: dict) -> asyncio.Future:
        name = payload.decode()
        self.log.append(f"pub {name}")
        future = asyncio.get_running_loop().create_future()

        def answer() -> None:
            self.log.append(f"ack {name}")
            if name in self.refuse:
                future.set_exception(RuntimeError(f"{name} refused"))
            else:
                future.set_result(object())
        asyncio.get_running_loop().call_soon(answer)
        return future


class _Broker:
    def __init__(self, js: _Js) -> None:
        self.js = js


def _rows(*names: str) -> list[dict]:
    # A1 is the first event of aggregate A, and so on.
    return [{"seq": seq, "event_id": f"e{seq}", "subject": "s", "aggregate_id": name[0], "payload": name.encode()}
            for seq, name in enumerate(names, start=1)]


def _relay(js: _Js) -> OutboxRelay:
    return OutboxRelay(None, _Broker(js), "test", dsn="")  # type: ignore[arg-type]


async def test_each_aggregate_waits_for_its_previous_ack_and_the_others_go_together():
    js = _Js()
    sent, failed = await _relay(js)._publish(_rows("A1", "B1", "A2", "C1", "A3", "B2"))
    assert failed == [] and sent == [1, 2, 4, 3, 6, 5]
    assert js.log == ["pub A1", "pub B1", "pub C1", "ack A1", "ack B1", "ack C1",
                      "pub A2", "pub B2", "ack A2", "ack B2",
                      "pub A3", "ack A3"]


async def test_a_failed_event_holds_back_its_aggregate_only():
    js = _Js(refuse={"A1"})
    sent, failed = await _relay(js)._publish(_rows("A1", "B1", "A2", "C1", "A3", "B2"))
    assert [row["seq"] for row, _ in failed] == [1] and "A1 refused" in str(failed[0][1])
    assert sent == [2, 4, 6]
    assert "pub A2" not in js.log and "pub A3" not in js.log  # never overtakes A1
