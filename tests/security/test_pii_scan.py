"""No plaintext mobile or ID number anywhere but the vendor's address field: not in the
logs, the event streams, the message bodies the vendors received, or the database."""
from __future__ import annotations

import json
import re
import subprocess

from services.common import messaging
from services.common.localstack import DB_NAME
from tests.support.pii import find_pii


def _scan(source: str, text: str, secrets: list[str], hits: list) -> None:
    found = find_pii(text) + [s for s in secrets if s in text]
    hits += [(source, value) for value in found]


async def _stream_messages(broker) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for stream in messaging.STREAMS.values():
        info = await broker.js.stream_info(stream)
        out[stream] = [(await broker.js.get_msg(stream, seq)).data
                       for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages]
    return out


_BYTEA = re.compile(r"\\\\x([0-9a-f]+)")


def _pg_dump(stack) -> str:
    """The whole database as text, bytea (outbox payloads, snapshots) decoded so that what
    they carry is scanned and their hex digits are not."""
    pg = stack.stack.postgres
    result = subprocess.run([pg.bin("pg_dump"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, DB_NAME],
                            capture_output=True, text=True, check=True, user=pg._os_user)
    return _BYTEA.sub(lambda m: bytes.fromhex(m.group(1)).decode("utf-8", errors="replace"), result.stdout)


def _vendor_bodies(vendors) -> list[tuple[str, str]]:
    """What each vendor was asked to show the patient; the phone number it was sent to is
    the address, not the body, and leaves the system by necessity."""
    wechat, aliyun, tencent = vendors
    bodies = [("wechat", json.dumps(m["data"], ensure_ascii=False)) for m in wechat.accepted]
    bodies += [("aliyun", json.dumps(m["params"], ensure_ascii=False)) for m in aliyun.accepted]
    bodies += [("tencent", json.dumps(m["params"], ensure_ascii=False)) for m in tencent.accepted]
    return bodies


async def test_no_plaintext_identifier_outside_the_encrypted_columns(services, flow, log_dir):
    assert flow.secrets and flow.notifications, "the flow made no patient data to scan"
    hits: list[tuple[str, str]] = []
    counts = {}
    log_lines = 0
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text(encoding="utf-8", errors="replace")
        log_lines += text.count("\n")
        _scan(f"log {path.name}", text, flow.secrets, hits)
    counts["log lines"] = log_lines
    broker = await messaging.Broker.connect(services.stack.nats_url, name="pii-scan")
    try:
        streams = await _stream_messages(broker)
    finally:
        await broker.close()
    for stream, payloads in streams.items():
        counts[f"{stream} messages"] = len(payloads)
        for data in payloads:
            _scan(f"stream {stream}", data.decode("utf-8", errors="replace"), flow.secrets, hits)
    bodies = _vendor_bodies(services.vendors)
    counts["vendor messages"] = len(bodies)
    for vendor, body in bodies:
        _scan(f"{vendor} body", body, flow.secrets, hits)
    dump = _pg_dump(services.stack)
    counts["dump lines"] = dump.count("\n")
    _scan("pg_dump", dump, flow.secrets, hits)
    print(f"\nPII scan of {counts} for {len(flow.secrets)} synthetic identifiers and the mobile/ID patterns: "
          f"hits = {len(hits)}")
    assert not hits, hits[:20]
