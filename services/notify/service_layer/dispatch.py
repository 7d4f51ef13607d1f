"""The durable dispatcher: claims due deliveries, calls the vendor, records the outcome.

Claiming (PENDING -> SENDING with a lease and a new claim id) commits before the vendor
call, and the outcome is recorded in a second transaction that only moves a delivery still
SENDING under that claim. A send is cut off at `send_timeout`, and starts only while the
lease has that and the time to record it left, so a live sender finishes inside its lease.
A sender that dies mid-call leaves a lapsed lease: the row is claimed again and sent
again with the same correlation id (the delivery id, Aliyun OutId / Tencent
SessionContext), so a vendor call is at-least-once and a SENT delivery never goes out again.

A lost answer (a timeout, or a connection dropped after the request may have left) is
ambiguous: the vendor may have taken the message. How its retry avoids a second message
depends on the vendor:
- Aliyun: its receipts echo the delivery id (OutId); a receipt for the attempt settles the
  delivery even while it waits for its retry, and a retry goes out only if none has.
- Tencent: its receipts do not echo the delivery id, but its status pull by number
  (PullSmsSendStatusByPhoneNumber) does. The retry waits `settle_wait` for the carrier's
  report to reach Tencent, then asks: a report of the attempt settles the delivery (SENT, then
  delivered or not) and nothing is sent again; no report sends again. A pull that fails is
  asked again later, never answered by a blind send, until `settle_pulls` have failed.
- WeChat: a timed-out subscribe message may be sent twice. WeChat reports a message
  (subscribe_msg_sent_event) only by the msgid its lost answer carried, and has no query by
  our id, so nothing can tell whether it took the message; the retry goes out as for any
  retryable failure.
Every attempt counts, whatever ends it: after `retry.max_attempts` the delivery takes the
way of a permanent failure (the next channel, else FAILED and the clinic told).
"""
from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Counter

from notify.v1 import events_pb2
from services.common import outbox
from services.common.logging import get_logger
from services.notify.adapters import repository as repo
from services.notify.adapters.channels import (SendOutcome, SendReport, SendStatus, SmsMessage, StatusQuery,
                                               StatusQueryFailed, WeChatMessage)
from services.notify.adapters.channels.base import normalize_cn_mobile
from services.notify.domain.model import MOBILE_CONTEXT, SHANGHAI, Channel, DeliveryStatus
from services.notify.domain.policy import Caps, RetryPolicy, cap_deferral
from services.notify.domain.templates import Rendered, Template, TemplateError, render
from services.notify.service_layer.notifications import NotifyConfig, derived_id

log = get_logger(__name__)


# What an operator watches: a vendor refusing or failing, messages not reaching patients.
# Counted as applied: a batch whose transaction fails and that the vendor pushes again
# counts twice (rare, and the rates stay right).
SENDS = Counter("notify_sends_total", "Vendor send calls, by channel, vendor and outcome.",
                ("channel", "vendor", "outcome"))
REPORTS = Counter("notify_delivery_reports_total",
                  "SMS receipts and WeChat send results that settled a delivery, by vendor and verdict.",
                  ("vendor", "verdict"))
FALLBACKS = Counter("notify_fallbacks_total", "Deliveries moved on to the patient's next channel, and why.",
                    ("from_channel", "to_channel", "cause"))
UNREACHED = Counter("notify_unreached_total",
                    "Essential messages no channel delivered: the clinic is asked to call.", ("channel",))
SETTLE_PULLS = Counter("notify_settle_pulls_total",
                       "Status pulls about sends whose answer was lost, by vendor and result: found (not sent "
                       "again), not_found (sent again), failed (asked again later), failed_sent_anyway (the last "
                       "one allowed: sent again, possibly twice).", ("vendor", "result"))


@dataclass
class Channels:
    """The vendor clients in use; a missing one makes its channel unusable."""
    wechat: object | None = None
    sms: object | None = None

    async def aclose(self) -> None:
        for client in (self.wechat, self.sms):
            if client is not None:
                await client.aclose()


# Kept after a send's timeout, before its lease ends, to record the outcome (a transaction).
RECORD_MARGIN = timedelta(seconds=10)


@dataclass
class DispatchSettings:
    lease: timedelta = timedelta(seconds=60)
    # One vendor send with all its HTTP calls (WeChat: token, post, token refresh, post),
    # however slowly the vendor trickles its answers.
    send_timeout: timedelta = timedelta(seconds=7)
    batch: int = 50
    poll_seconds: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    caps: Caps = field(default_factory=Caps)
    # The least wait before the retry of a send whose answer was lost, where the vendor can be
    # asked about it (Tencent): the carrier's report must reach the vendor first.
    settle_wait: timedelta = timedelta(minutes=5)
    # Failed status pulls after which that retry goes out unanswered.
    settle_pulls: int = 3

    def __post_init__(self) -> None:
        if self.lease < self.send_timeout + RECORD_MARGIN:
            raise ValueError(f"the dispatch lease ({self.lease.total_seconds():g} s) must cover a send "
                             f"({self.send_timeout.total_seconds():g} s) and {RECORD_MARGIN.total_seconds():g} s "
                             "to record it")


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, cfg: NotifyConfig, channels: Channels, pii, settings: DispatchSettings,
                 rng: random.Random | None = None) -> None:
        self._pool = pool
        self._cfg = cfg
        self._channels = channels
        self._pii = pii
        self._s = settings
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopping = False
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    # ----------------------------------------------------------------- graceful stop

    def stop(self) -> None:
        """Shutdown (services.common.app.Job): claim nothing more, hand back what is claimed
        but not started, and let `run` return once the sends in flight (each bounded by the
        send timeout) are recorded. Cancelling instead would leave the claimed batch waiting
        out its lease, and a send cut off mid-call could go out twice."""
        self._stopping = True
        self._wake.set()

    async def _hand_back(self, d, n) -> None:
        try:
            await self._defer(d, self._cfg.clock(), "dispatcher stopping", n)
        except Exception as exc:  # noqa: BLE001 - the lease brings it back
            log.warning("delivery not handed back at shutdown", delivery_id=str(d["id"]), error=repr(exc))

    # ----------------------------------------------------------------- the loop

    async def run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                handled = await self.dispatch_once()
                failures = 0
                if handled >= self._s.batch:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - database trouble: back off and go on
                failures += 1
                log.warning("dispatcher error", error=repr(exc), failures=failures)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** failures))
                continue
            if self._stopping:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._s.poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def dispatch_once(self) -> int:
        now = self._cfg.clock()
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = await repo.claim_due(conn, now, self._s.lease, self._s.batch)
        if not claimed:
            return 0
        async with self._pool.acquire() as conn:
            loaded = [(d, await repo.load_for_send(conn, d["notification_id"])) for d in claimed]
        # One patient's messages go in order, one at a time, so the per-number caps see each send.
        by_patient: dict[str, list] = defaultdict(list)
        for delivery, notification in loaded:
            by_patient[notification["recipient"]].append((delivery, notification))
        await asyncio.gather(*(self._send_in_turn(items) for items in by_patient.values()))
        return len(claimed)

    async def _send_in_turn(self, items: list) -> None:
        for delivery, notification in items:
            if self._stopping:
                await self._hand_back(delivery, notification)
                continue
            try:
                await self._process(delivery, notification)
            except Exception as exc:  # noqa: BLE001 - an attempt like a vendor's failure, so it cannot loop forever
                log.warning("delivery failed unexpectedly", delivery_id=str(delivery["id"]), error=repr(exc))
                await self._record_error(delivery, notification, exc)

    async def _record_error(self, d, n, exc: Exception) -> None:
        try:
            await self._record(d, n, SendOutcome(SendStatus.RETRYABLE, "ERROR", detail=repr(exc)[:200]))
        except Exception as again:  # noqa: BLE001 - the database too: the lease brings it back, and the claim counts
            log.warning("failed attempt not recorded", delivery_id=str(d["id"]), error=repr(again))

    # ----------------------------------------------------------------- one delivery

    async def _process(self, d: asyncpg.Record, n: asyncpg.Record) -> None:
        now = self._cfg.clock()
        if n["expires_at"] is not None and now >= n["expires_at"]:
            await self._finish(d, DeliveryStatus.CANCELLED, reason="expired: the appointment has begun")
            return
        if n["consent"] is False:
            await self._finish(d, DeliveryStatus.CANCELLED, reason="consent withdrawn")
            return
        if not n["essential"] and n["opt_out_non_essential"]:
            await self._finish(d, DeliveryStatus.CANCELLED, reason="patient opted out")
            return
        if d["attempts"] > self._s.retry.max_attempts:
            # Each earlier claim lapsed with no outcome recorded (its sender died, every time).
            await self._record(d, n, SendOutcome(SendStatus.PERMANENT, "NO_OUTCOME",
                                                 detail=f"{d['attempts'] - 1} attempts ended without an outcome"))
            return
        ignores_quiet = bool(n["urgent_ignores_quiet_hours"]) if n["urgent_ignores_quiet_hours"] is not None else True
        if (not (n["urgent"] and ignores_quiet)) and self._cfg.quiet.contains(now):
            await self._defer(d, self._cfg.quiet.next_allowed(now), "quiet hours", n)
            return
        channel = Channel(d["channel"])
        try:
            tpl, rendered = await self._render(n)
        except TemplateError as exc:
            # The stored values and the catalogue are the same at every attempt: no retry can help.
            await self._record(d, n, SendOutcome(SendStatus.PERMANENT, "TEMPLATE", detail=str(exc)[:200]))
            return
        mobile_hash = None
        if channel is Channel.WECHAT:
            client = self._channels.wechat
            if (client is None or not n["wechat_openid"]
                    or tpl.wechat.template_id in n["wechat_refused_templates"]):
                await self._record(d, n, SendOutcome(SendStatus.PERMANENT, "NO_WECHAT", detail="no usable subscription"))
                return
            message = WeChatMessage(openid=n["wechat_openid"], template_id=tpl.wechat.template_id,
                                    data=rendered.wechat_data, page=rendered.wechat_page or None,
                                    correlation_id=str(d["id"]))
        else:
            client = self._channels.sms
            mobile = self._mobile(n)
            if client is None or mobile is None:
                await self._record(d, n, SendOutcome(SendStatus.PERMANENT, "NO_MOBILE", detail="no usable mobile"))
                return
            mobile_hash = n["contact_mobile_hash"]
            if mobile_hash and await self._capped(d, n, mobile_hash, now):
                return
            code = tpl.aliyun if self._cfg.sms_vendor == "aliyun" else tpl.tencent
            message = SmsMessage(phone=mobile, template_code=code, params=rendered.sms_params,
                                 correlation_id=str(d["id"]))
        if d["unsettled_since"] is not None and not await self._earlier_attempt_missing(d, n, message, mobile_hash):
            return
        outcome = await self._send(d, n, client, message)
        if outcome is not None:
            await self._record(d, n, outcome, mobile_hash=mobile_hash)

    async def _render(self, n: asyncpg.Record) -> tuple[Template, Rendered]:
        """With the catalogue's version of the template, the one the vendors approved (the
        catalogue keeps no older ones); a message planned under another version is recorded
        with the version and text it goes out with."""
        tpl = self._cfg.catalogue.get(n["template"])
        rendered = render(tpl, json.loads(n["params"]), sms_param_limit=self._cfg.sms_param_limit)
        if tpl.version != n["template_version"]:
            async with self._pool.acquire() as conn:
                await repo.record_rendering(conn, n["id"], tpl.version, rendered.text)
        return tpl, rendered

    async def _send(self, d, n, client, message) -> SendOutcome | None:
        """The vendor's answer; None when nothing went out (handed back, or no longer this claim's)."""
        if not await self._lease_fits_a_call(d, n, "a send"):
            return None
        if d["attempts"] > 1:
            # An earlier attempt may have reached the vendor with its answer lost: a receipt
            # for it (matched by the delivery id) may have settled the delivery since the claim.
            async with self._pool.acquire() as conn:
                if not await repo.still_claimed(conn, d["id"], d["claim"]):
                    return None
        try:
            async with asyncio.timeout(self._s.send_timeout.total_seconds()):
                return await client.send(message)
        except TimeoutError:
            return SendOutcome(SendStatus.RETRYABLE, "TIMEOUT", detail="no answer within the send timeout",
                               maybe_sent=True)

    async def _lease_fits_a_call(self, d, n, call: str) -> bool:
        """Whether a vendor call (bounded by the send timeout) and its record still fit in the
        claim's lease; else `d` is handed back. This patient's earlier messages may have used up
        the lease, and a call that outlasts it can go out again under another claim."""
        if self._cfg.clock() + self._s.send_timeout + RECORD_MARGIN <= d["lease_until"]:
            return True
        await self._defer(d, self._cfg.clock(), f"lease too short for {call}", n)
        return False

    def _status_query(self, d) -> StatusQuery | None:
        """The client that can tell whether an unanswered attempt of `d` reached its vendor."""
        client = self._channels.sms
        if d["channel"] != Channel.SMS.value or d["vendor"] != self._cfg.sms_vendor:
            return None
        return client if isinstance(client, StatusQuery) else None

    async def _earlier_attempt_missing(self, d, n, message: SmsMessage, mobile_hash: str | None) -> bool:
        """Whether the retry of an attempt whose answer was lost may go out: the vendor has
        no report of that attempt. With a report, the delivery is the attempt's (recorded SENT,
        then settled by the report as by a receipt) and nothing is sent; when the vendor cannot
        say, the retry waits and asks again, at most `settle_pulls` times."""
        query = self._status_query(d)
        if query is None:
            # The vendor changed since (SMS_VENDOR) and the new one cannot be asked: as before.
            return True
        if not await self._lease_fits_a_call(d, n, "a status pull"):
            return False
        async with self._pool.acquire() as conn:
            if not await repo.still_claimed(conn, d["id"], d["claim"]):
                return False  # a receipt or a cancellation moved it meanwhile
        try:
            async with asyncio.timeout(self._s.send_timeout.total_seconds()):
                report = await query.find_report(message.phone, message.correlation_id, d["unsettled_since"])
        except (StatusQueryFailed, TimeoutError) as exc:
            code = exc.outcome.vendor_code if isinstance(exc, StatusQueryFailed) else "TIMEOUT"
            pulls = d["settle_pulls"] + 1
            if pulls < self._s.settle_pulls:
                SETTLE_PULLS.labels(d["vendor"], "failed").inc()
                log.warning("status pull failed: the retry waits to ask again", delivery_id=str(d["id"]),
                            code=code, pulls=pulls)
                await self._defer(d, self._cfg.clock() + self._s.retry.delay(pulls, self._rng),
                                  f"status pull failed: {code}"[:200], n, failed_pull=True)
                return False
            # The status API is down or refuses us: holding the message longer would leave the
            # patient untold, and a second SMS is the lesser harm.
            SETTLE_PULLS.labels(d["vendor"], "failed_sent_anyway").inc()
            log.warning("status pulls keep failing: sending again, the patient may get the message twice",
                        delivery_id=str(d["id"]), code=code, pulls=pulls)
            report = None
        else:
            SETTLE_PULLS.labels(d["vendor"], "found" if report else "not_found").inc()
        if report is not None:
            await self._record_report(d, report, message, mobile_hash)
            return False
        # No status of the attempt after the settle wait: most likely the vendor never took it
        # (the request died on the way). Else its report is late or lost, and the patient gets
        # it twice; sending is still the right call, as waiting longer holds every message whose
        # attempt truly failed, and a patient not told of an appointment is the worse harm.
        async with self._pool.acquire() as conn:
            return await repo.settled(conn, d["id"], d["claim"])

    async def _record_report(self, d, report: SendReport, message: SmsMessage, mobile_hash: str | None) -> None:
        """The earlier attempt went out: the delivery is SENT as of that attempt (this claim
        sent nothing, so it is no attempt), and the vendor's report settles it as a receipt."""
        now = self._cfg.clock()
        async with self._pool.acquire() as conn, conn.transaction():
            if not await repo.finish(conn, d["id"], d["claim"], DeliveryStatus.SENT, vendor_code=report.code,
                                     vendor_message_id=report.vendor_message_id, sent_at=d["unsettled_since"],
                                     mobile_hash=mobile_hash, count_attempt=False):
                return
            self.sent += 1
            # Kept as the vendor's receipt would be: its callback for the same message (maybe
            # already here, unlinked, as it names no delivery) then applies once.
            # The contact's hash is the number's as receipts hash it (normalized, 11 digits: notify
            # and referral store only such numbers); a contact without one is hashed here.
            phone_hash = mobile_hash or self._pii.lookup_hash(normalize_cn_mobile(message.phone))
            await repo.record_receipt(conn, vendor=d["vendor"], vendor_message_id=report.vendor_message_id,
                                      phone_hash=phone_hash, code=report.code, delivered=report.delivered)
            if await _apply_early_receipts(conn, d, report.vendor_message_id, now, self._cfg):
                self.wake()
        log.info("unanswered send found by a status pull: not sent again", delivery_id=str(d["id"]),
                 delivered=report.delivered, code=report.code)

    def _mobile(self, n: asyncpg.Record) -> str | None:
        if not n["mobile_ciphertext"]:
            return None
        try:
            return self._pii.decrypt(n["mobile_ciphertext"], context=MOBILE_CONTEXT)
        except Exception:  # noqa: BLE001 - wrong key or corrupt: the number is unusable, say so without it
            log.warning("stored mobile cannot be decrypted", patient_id=n["recipient"])
            return None

    async def _capped(self, d, n, mobile_hash: str, now: datetime) -> bool:
        async with self._pool.acquire() as conn:
            rows = await repo.sms_sends_since(conn, mobile_hash, now - timedelta(days=1), d["id"])
        midnight = now.astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
        later = cap_deferral(now, self._s.caps,
                             same_template_today=[r["sent_at"] for r in rows
                                                  if r["template"] == n["template"] and r["sent_at"] >= midnight],
                             all_recent=[r["sent_at"] for r in rows])
        if later is None:
            return False
        await self._defer(d, later, "per-number cap", n)
        return True

    async def _defer(self, d, until: datetime, why: str, n, *, failed_pull: bool = False) -> None:
        """Not an attempt: the message waits (quiet hours, caps, a status pull to ask again)
        unless it would be too late."""
        if not (n["urgent"]) and self._cfg.quiet.contains(until):
            until = self._cfg.quiet.next_allowed(until)
        if n["expires_at"] is not None and until >= n["expires_at"]:
            await self._finish(d, DeliveryStatus.CANCELLED, reason=f"{why}: would arrive too late")
            return
        async with self._pool.acquire() as conn:
            await repo.reschedule(conn, d["id"], d["claim"], until, reason=why, count_attempt=False,
                                  failed_pull=failed_pull)

    async def _finish(self, d, status: DeliveryStatus, *, reason: str) -> None:
        async with self._pool.acquire() as conn:
            await repo.finish(conn, d["id"], d["claim"], status, reason=reason)

    # ----------------------------------------------------------------- outcomes

    async def _record(self, d, n, outcome: SendOutcome, *, mobile_hash: str | None = None) -> None:
        now = self._cfg.clock()
        delivery_id = d["id"]
        SENDS.labels(d["channel"], d["vendor"], outcome.status.value.lower()).inc()
        async with self._pool.acquire() as conn, conn.transaction():
            if outcome.status is SendStatus.SENT:
                if await repo.finish(conn, delivery_id, d["claim"], DeliveryStatus.SENT,
                                     vendor_code=outcome.vendor_code,
                                     vendor_message_id=outcome.vendor_message_id, sent_at=now,
                                     mobile_hash=mobile_hash):
                    self.sent += 1
                    if await _apply_early_receipts(conn, d, outcome.vendor_message_id, now, self._cfg):
                        self.wake()
                return
            if outcome.status is SendStatus.USER_REFUSED:
                # This template's subscription is gone; the patient's other templates stay on WeChat.
                template_id = self._cfg.catalogue.get(n["template"]).wechat.template_id
                await repo.record_wechat_choices(conn, [(n["wechat_openid"], template_id, False, now)])
            if outcome.status is SendStatus.RETRYABLE and not self._s.retry.exhausted(d["attempts"]):
                due = now + self._s.retry.delay(d["attempts"], self._rng)
                # The retry of an attempt the vendor may have taken first asks the vendor, once
                # the carrier's report can be there. The attempt is dated by its claim: before
                # the request left, and by the database's wall clock, which the vendor's window
                # is in (the policy clock need not be).
                unsettled_since = None
                if outcome.maybe_sent and self._status_query(d) is not None:
                    due = max(due, now + self._s.settle_wait)
                    unsettled_since = d["updated_at"]
                if not (n["urgent"]) and self._cfg.quiet.contains(due):
                    due = self._cfg.quiet.next_allowed(due)
                if n["expires_at"] is None or due < n["expires_at"]:
                    await repo.reschedule(conn, delivery_id, d["claim"], due, reason=f"retry: {outcome.detail}"[:200],
                                          vendor_code=outcome.vendor_code, unsettled_since=unsettled_since)
                    return
            await self._give_up_or_fall_back(conn, d, n, outcome, now)

    async def _give_up_or_fall_back(self, conn, d, n, outcome: SendOutcome, now: datetime) -> None:
        after = next_channel(n, d)
        reason = f"{outcome.status.value} {outcome.vendor_code}: {outcome.detail}"[:300]
        if after is not None:
            if await repo.finish(conn, d["id"], d["claim"], DeliveryStatus.FELL_BACK, reason=reason,
                                 vendor_code=outcome.vendor_code):
                await repo.insert_delivery(conn, n["id"], after, self._cfg.vendor_for(after), now)
                log.info("delivery fell back", delivery_id=str(d["id"]), to=after.value, code=outcome.vendor_code)
                FALLBACKS.labels(d["channel"], after.value, "send").inc()
                self.wake()
            return
        if await repo.finish(conn, d["id"], d["claim"], DeliveryStatus.FAILED, reason=reason,
                             vendor_code=outcome.vendor_code):
            await publish_failure(conn, n, d["id"], outcome.vendor_code, d["channel"])


async def publish_failure(conn, n, delivery_id: uuid.UUID, vendor_code: str, channel: str) -> None:
    """The patient could not be told: the clinic gets an event so a person can call."""
    if not n["essential"]:
        return
    UNREACHED.labels(channel).inc()
    event = events_pb2.PatientNotificationFailed(
        referral_id=n["referral_id"], clinic_id=n["clinic_id"], hospital_id=n["hospital_id"],
        notification_id=str(n["id"]), template=n["template"], vendor_code=vendor_code or "")
    await outbox.add(conn, event, aggregate_id=n["referral_id"], hospital_id=n["hospital_id"],
                     event_id=derived_id(str(delivery_id), "failed"))


def next_channel(n: asyncpg.Record, d: asyncpg.Record) -> Channel | None:
    """The channel a notification tries after delivery `d`'s, if its plan has one."""
    plan = [Channel(c) for c in n["channel_plan"]]
    current = Channel(d["channel"])
    rest = plan[plan.index(current) + 1:] if current in plan else []
    return rest[0] if rest else None


async def settle_by_receipt(conn, d: asyncpg.Record, delivered: bool, code: str, at: datetime, now: datetime,
                            cfg: NotifyConfig) -> tuple[bool, Channel | None]:
    """A vendor's verdict on a sent delivery: DELIVERED; or, undelivered, a delivery on the
    plan's next channel (FELL_BACK); or FAILED and the clinic told, so a person calls.
    Returns whether the delivery changed, and the channel it fell back to (for the
    dispatcher to be woken). A WeChat refusal (43101) reported this way is recorded by the
    push that carries it (wechat_events), with the openid and template it names."""
    if delivered:
        moved = await repo.apply_receipt(conn, d["id"], DeliveryStatus.DELIVERED, code, at)
        if moved:
            REPORTS.labels(d["vendor"], "delivered").inc()
        return moved, None
    n = await conn.fetchrow("SELECT * FROM notifications WHERE id = $1", d["notification_id"])
    after = next_channel(n, d)
    if not await repo.apply_receipt(conn, d["id"], DeliveryStatus.FELL_BACK if after else DeliveryStatus.FAILED,
                                    code, at):
        return False, None
    REPORTS.labels(d["vendor"], "undelivered").inc()
    if after is not None:
        await repo.insert_delivery(conn, n["id"], after, cfg.vendor_for(after), now)
        log.info("delivery fell back after its receipt", delivery_id=str(d["id"]), to=after.value, code=code)
        FALLBACKS.labels(d["channel"], after.value, "report").inc()
        return True, after
    await publish_failure(conn, n, d["id"], code, d["channel"])
    return True, None


async def _apply_early_receipts(conn, d: asyncpg.Record, vendor_message_id: str | None, now: datetime,
                                cfg: NotifyConfig) -> Channel | None:
    """A receipt can beat our own record of the send; it waits unlinked and applies now."""
    if not vendor_message_id:
        return None
    rows = await conn.fetch("SELECT * FROM receipts WHERE vendor = $1 AND vendor_message_id = $2 "
                            "AND delivery_id IS NULL", d["vendor"], vendor_message_id)
    after = None
    for r in rows:
        await repo.link_receipt(conn, d["vendor"], vendor_message_id, r["phone_hash"], r["code"], d["id"])
        _, fell_back_to = await settle_by_receipt(conn, d, r["delivered"], r["code"], now, now, cfg)
        after = fell_back_to or after
    return after
