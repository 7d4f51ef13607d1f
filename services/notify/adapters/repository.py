"""asyncpg repository of the notify schema. Every function runs on the caller's connection
(and so inside the caller's transaction); no function opens one itself."""
from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta

import asyncpg

from services.notify.domain.model import (
    Appointment,
    Channel,
    Contact,
    DeliveryStatus,
    Place,
    Route,
)

# --------------------------------------------------------------------- contacts


async def save_preferences(conn: asyncpg.Connection, patient_id: str, *, channels: Sequence[Channel],
                           wechat_openid: str, consent: bool, opt_out_non_essential: bool,
                           urgent_ignores_quiet_hours: bool, set_by: str,
                           mobile: tuple[str, str, str] | None) -> asyncpg.Record:
    """`mobile` and `wechat_openid`, when given, are marked as `set_by`'s: referral events no
    longer replace them (learn). Preferences without an openid leave it to the referral events."""
    ciphertext, mobile_hash, masked = mobile or (None, None, None)
    return await conn.fetchrow(
        """INSERT INTO contacts (patient_id, channels, wechat_openid, consent, opt_out_non_essential,
                                 urgent_ignores_quiet_hours, preferences_set_by,
                                 mobile_ciphertext, mobile_hash, mobile_masked, mobile_set_by, wechat_openid_set_by)
           VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $3 <> '' THEN $7 END)
           ON CONFLICT (patient_id) DO UPDATE SET
             channels = EXCLUDED.channels,
             wechat_openid = EXCLUDED.wechat_openid, wechat_openid_set_by = EXCLUDED.wechat_openid_set_by,
             consent = EXCLUDED.consent,
             opt_out_non_essential = EXCLUDED.opt_out_non_essential,
             urgent_ignores_quiet_hours = EXCLUDED.urgent_ignores_quiet_hours,
             preferences_set_by = EXCLUDED.preferences_set_by,
             mobile_ciphertext = COALESCE(EXCLUDED.mobile_ciphertext, contacts.mobile_ciphertext),
             mobile_hash = COALESCE(EXCLUDED.mobile_hash, contacts.mobile_hash),
             mobile_masked = COALESCE(EXCLUDED.mobile_masked, contacts.mobile_masked),
             mobile_set_by = COALESCE(EXCLUDED.mobile_set_by, contacts.mobile_set_by),
             updated_at = now()
           RETURNING *""",
        patient_id, [c.value for c in channels], wechat_openid, consent, opt_out_non_essential,
        urgent_ignores_quiet_hours, set_by, ciphertext, mobile_hash, masked, set_by if mobile else None)


# The WeChat templates a contact's openid has refused, as a column of a contacts query.
_REFUSED_TEMPLATES = """ARRAY(SELECT w.template_id FROM wechat_template_choices w
                             WHERE w.openid = c.wechat_openid AND NOT w.accepted) AS wechat_refused_templates"""


async def contact_row(conn: asyncpg.Connection, patient_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT c.*, {_REFUSED_TEMPLATES} FROM contacts c WHERE c.patient_id = $1",
                               patient_id)


def contact_from(row: asyncpg.Record | None, patient_id: str) -> Contact:
    if row is None:
        return Contact(patient_id=patient_id)
    return Contact(
        patient_id=patient_id, has_mobile=bool(row["mobile_ciphertext"]),
        wechat_openid=row["wechat_openid"] or "", wechat_refused_templates=frozenset(row["wechat_refused_templates"]),
        consent=row["consent"], opt_out_non_essential=row["opt_out_non_essential"],
        urgent_ignores_quiet_hours=row["urgent_ignores_quiet_hours"],
        channels=tuple(Channel(c) for c in row["channels"]))


async def record_wechat_choices(conn: asyncpg.Connection, choices: Sequence[tuple[str, str, bool, datetime]]) -> None:
    """(openid, template id, accepted, decided at) as WeChat reported them: the newest
    decision per openid and template wins, whatever order they arrive in."""
    latest: dict[tuple[str, str], tuple[str, str, bool, datetime]] = {}
    for choice in choices:
        key = choice[:2]
        if key not in latest or latest[key][3] <= choice[3]:
            latest[key] = choice
    if not latest:
        return
    openids, templates, accepted, at = (list(column) for column in zip(*latest.values()))
    await conn.execute(
        """INSERT INTO wechat_template_choices (openid, template_id, accepted, decided_at)
           SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::timestamptz[])
           ON CONFLICT (openid, template_id) DO UPDATE SET accepted = EXCLUDED.accepted,
                                                           decided_at = EXCLUDED.decided_at
           WHERE wechat_template_choices.decided_at <= EXCLUDED.decided_at""",
        openids, templates, accepted, at)



async def clear_idle_contacts(conn: asyncpg.Connection, cutoff: datetime, batch: int) -> int:
    """Clears the number (with its hash and who set it) and the openid (with who set it and its
    template choices) of up to `batch` contacts untouched since `cutoff` whose patient has no referral
    event, no appointment and no message in flight since then; returns how many. Preferences stay."""
    return await conn.fetchval(
        """WITH idle AS (
             SELECT c.patient_id, c.wechat_openid FROM contacts c
             WHERE c.updated_at < $1
               AND (c.mobile_ciphertext IS NOT NULL OR c.mobile_hash IS NOT NULL OR c.wechat_openid IS NOT NULL)
               AND NOT EXISTS (SELECT FROM referral_routes r
                               WHERE r.patient_id = c.patient_id AND r.updated_at >= $1)
               AND NOT EXISTS (SELECT FROM referral_routes r JOIN appointments a USING (referral_id)
                               WHERE r.patient_id = c.patient_id AND a.start_at >= $1)
               -- A receipt can turn a SENT delivery into a fallback that needs the other channel.
               AND NOT EXISTS (SELECT FROM notifications n JOIN deliveries d ON d.notification_id = n.id
                               WHERE n.recipient = c.patient_id
                                 AND (d.status IN ('PENDING', 'SENDING')
                                      OR (d.status = 'SENT' AND d.updated_at >= $1)))
             LIMIT $2
             FOR UPDATE OF c SKIP LOCKED),
           cleared AS (
             UPDATE contacts c SET mobile_ciphertext = NULL, mobile_hash = NULL, mobile_masked = NULL,
                                   mobile_set_by = NULL, wechat_openid = NULL, wechat_openid_set_by = NULL
             FROM idle WHERE c.patient_id = idle.patient_id
             RETURNING idle.wechat_openid AS openid),
           choices AS (
             DELETE FROM wechat_template_choices w WHERE w.openid IN (SELECT openid FROM cleared)
               AND NOT EXISTS (SELECT FROM contacts o WHERE o.wechat_openid = w.openid
                                 AND o.patient_id NOT IN (SELECT patient_id FROM idle)))
           SELECT count(*) FROM cleared""", cutoff, batch)

# --------------------------------------------------------------------- routes


# What a referral event may update of a contact, by the column recording who set it through
# preferences: a value set there outranks the referral snapshots' (until preferences change it).
_SET_THROUGH_PREFERENCES = {
    "mobile_set_by": ("mobile_ciphertext", "mobile_hash", "mobile_masked"),
    "wechat_openid_set_by": ("wechat_openid",),
}
_LEARNED = ",\n".join(
    f"{column} = COALESCE(CASE WHEN contacts.{set_by} IS NULL THEN EXCLUDED.{column} END, contacts.{column})"
    for set_by, columns in _SET_THROUGH_PREFERENCES.items() for column in columns)


async def learn(conn: asyncpg.Connection, route: Route, sender_id: str, receiver_id: str, *,
                mobile_ciphertext: str, mobile_hash: str, mobile_masked: str, wechat_openid: str) -> Route:
    """The referral's route and the patient's contact as the referral service last stated
    them, in one statement (one per referral event); returns the route as stored. Preferences
    set through the API stay, and so do a mobile and an openid set through them (until they
    set another). A cancellation is final: a route once cancelled stays so."""
    row = await conn.fetchrow(
        f"""WITH contact AS (
             INSERT INTO contacts (patient_id, mobile_ciphertext, mobile_hash, mobile_masked, wechat_openid)
             SELECT $2, NULLIF($9, ''), NULLIF($10, ''), NULLIF($11, ''), NULLIF($12, '') WHERE $2 <> ''
             ON CONFLICT (patient_id) DO UPDATE SET
               {_LEARNED},
               updated_at = now())
           INSERT INTO referral_routes (referral_id, patient_id, hospital_id, clinic_id, sender_id,
                                        receiver_id, department, urgent, cancelled)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$13)
           ON CONFLICT (referral_id) DO UPDATE SET patient_id = EXCLUDED.patient_id,
             hospital_id = EXCLUDED.hospital_id, clinic_id = EXCLUDED.clinic_id,
             sender_id = EXCLUDED.sender_id, receiver_id = EXCLUDED.receiver_id,
             department = EXCLUDED.department, urgent = EXCLUDED.urgent,
             cancelled = referral_routes.cancelled OR EXCLUDED.cancelled, updated_at = now()
           RETURNING *""",
        route.referral_id, route.patient_id, route.hospital_id, route.clinic_id, sender_id, receiver_id,
        route.department, route.urgent, mobile_ciphertext, mobile_hash, mobile_masked, wechat_openid,
        route.cancelled)
    return route_from(row)


async def get_route(conn: asyncpg.Connection, referral_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM referral_routes WHERE referral_id = $1", referral_id)


def route_from(row: asyncpg.Record) -> Route:
    return Route(referral_id=row["referral_id"], patient_id=row["patient_id"], hospital_id=row["hospital_id"],
                 clinic_id=row["clinic_id"], department=row["department"], urgent=row["urgent"],
                 cancelled=row["cancelled"])


# --------------------------------------------------------------------- appointments


def _appt_json(appt: Appointment) -> str:
    data = asdict(appt)
    data["start"] = appt.start.isoformat()
    return json.dumps(data, ensure_ascii=False)


def _appt_from(raw: str) -> Appointment:
    data = json.loads(raw)
    data["start"] = datetime.fromisoformat(data["start"])
    data["place"] = Place(**data["place"])
    return Appointment(**data)


async def save_appointments(conn: asyncpg.Connection, booking_id: str, referral_id: str,
                            items: Sequence[Appointment]) -> None:
    await conn.execute("UPDATE appointments SET current = false WHERE booking_id = $1", booking_id)
    for appt in items:
        await conn.execute(
            """INSERT INTO appointments (booking_id, item_id, referral_id, details, start_at, current)
               VALUES ($1,$2,$3,$4::jsonb,$5,true)
               ON CONFLICT (booking_id, item_id) DO UPDATE SET details = EXCLUDED.details,
                 start_at = EXCLUDED.start_at, current = true""",
            booking_id, appt.item_id, referral_id, _appt_json(appt), appt.start)


async def current_appointments(conn: asyncpg.Connection, booking_id: str) -> list[Appointment]:
    rows = await conn.fetch("SELECT details FROM appointments WHERE booking_id = $1 AND current "
                            "ORDER BY start_at", booking_id)
    return [_appt_from(r["details"]) for r in rows]


async def drop_appointments(conn: asyncpg.Connection, *, booking_id: str = "", referral_id: str = "") -> None:
    await conn.execute("UPDATE appointments SET current = false WHERE booking_id = $1 OR referral_id = $2",
                       booking_id, referral_id)


# --------------------------------------------------------------------- notifications


async def insert_notification(conn: asyncpg.Connection, *, event_id: str, recipient: str, template: str,
                              part: str, version: int, route: Route, booking_id: str, essential: bool,
                              urgent: bool, reminder: bool, params: dict, text: str,
                              channel_plan: Sequence[Channel], skip_reason: str | None,
                              expires_at: datetime | None, covers: Sequence[str] = ()) -> uuid.UUID | None:
    """The new notification's id, or None when this (event, recipient, template, part) exists."""
    return await conn.fetchval(
        """INSERT INTO notifications (id, event_id, recipient, template, part, template_version, referral_id,
             hospital_id, clinic_id, booking_id, essential, urgent, reminder, params, text, channel_plan,
             skip_reason, expires_at, covers)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14::jsonb,$15,$16,$17,$18,$19)
           ON CONFLICT (event_id, recipient, template, part) DO NOTHING RETURNING id""",
        uuid.uuid4(), event_id, recipient, template, part, version, route.referral_id, route.hospital_id,
        route.clinic_id, booking_id, essential, urgent, reminder, json.dumps(params, ensure_ascii=False),
        text, [c.value for c in channel_plan], skip_reason, expires_at, list(covers))


async def record_rendering(conn: asyncpg.Connection, notification_id: uuid.UUID, version: int, text: str) -> None:
    """The template version and text a notification goes out with, when its template
    changed after the notification was planned."""
    await conn.execute("UPDATE notifications SET template_version = $2, text = $3 WHERE id = $1",
                       notification_id, version, text)


async def notification_id_for(conn: asyncpg.Connection, event_id: str, recipient: str, template: str,
                              part: str) -> uuid.UUID | None:
    return await conn.fetchval("SELECT id FROM notifications WHERE event_id=$1 AND recipient=$2 AND template=$3 "
                               "AND part=$4", event_id, recipient, template, part)


async def insert_delivery(conn: asyncpg.Connection, notification_id: uuid.UUID, channel: Channel, vendor: str,
                          due_at: datetime) -> uuid.UUID:
    delivery_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO deliveries (id, notification_id, channel, vendor, status, due_at) VALUES ($1,$2,$3,$4,$5,$6)",
        delivery_id, notification_id, channel.value, vendor, DeliveryStatus.PENDING.value, due_at)
    return delivery_id


async def cancel_pending_messages(conn: asyncpg.Connection, referral_id: str, *, booking_id: str = "",
                                  keep_parts: Sequence[str] = (), reason: str,
                                  timezone: str = "Asia/Shanghai") -> list[asyncpg.Record]:
    """Cancels the deliveries still waiting of the referral's messages (of one booking's, if
    given), except the messages of `keep_parts`. Returns the kept messages still waiting (with
    their waiting delivery's `due_at`) whose instructions message this cancelled: one covering
    their part on the day (in `timezone`) they are due.

    An instructions message never stays: it may carry a superseded item's instruction, and one
    per day is what the patient should get, so the caller plans it afresh for the kept messages
    returned and the new ones together."""
    return await conn.fetch(
        """WITH cancelled AS (
             UPDATE deliveries d SET status = 'CANCELLED', status_reason = $4, updated_at = now()
             FROM notifications n
             WHERE d.notification_id = n.id AND n.referral_id = $1 AND ($2 = '' OR n.booking_id = $2)
               AND n.part <> ALL($3::text[]) AND d.status IN ('PENDING', 'SENDING')
             RETURNING n.part, n.covers)
           -- Sees the rows as they were before the cancellation, which leaves these alone.
           SELECT n.*, d.due_at FROM notifications n JOIN deliveries d ON d.notification_id = n.id
           WHERE n.referral_id = $1 AND n.booking_id = $2 AND n.part = ANY($3::text[])
             AND d.status IN ('PENDING', 'SENDING')
             AND EXISTS (SELECT FROM cancelled c
                         WHERE n.part = ANY(c.covers)
                           AND split_part(c.part, '#', 1) = to_char(d.due_at AT TIME ZONE $5, 'YYYY-MM-DD'))
           ORDER BY d.due_at, n.part""",
        referral_id, booking_id, list(keep_parts), reason, timezone)


async def bring_told(conn: asyncpg.Connection, referral_id: str, booking_id: str) -> str:
    """What the patient was told to bring to this booking's appointments ('' if never told):
    the `bring` value its first message was rendered with."""
    return await conn.fetchval(
        """SELECT params->>'bring' FROM notifications
           WHERE referral_id = $1 AND booking_id = $2 AND params ? 'bring'
           ORDER BY created_at LIMIT 1""", referral_id, booking_id) or ""


# --------------------------------------------------------------------- dispatch


async def claim_due(conn: asyncpg.Connection, now: datetime, lease: timedelta, limit: int) -> list[asyncpg.Record]:
    """Due deliveries, and ones whose sender died mid-call (lease over), become SENDING under
    a new `claim`: the writes below apply only under it."""
    return await conn.fetch(
        """UPDATE deliveries d SET status = 'SENDING', lease_until = $2, attempts = d.attempts + 1,
                                  claim = gen_random_uuid(), updated_at = now()
           WHERE d.id IN (SELECT id FROM deliveries
                          WHERE (status = 'PENDING' AND due_at <= $1) OR (status = 'SENDING' AND lease_until < $1)
                          ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED)
           RETURNING d.*""",
        now, now + lease, limit)


async def load_for_send(conn: asyncpg.Connection, notification_id: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""SELECT n.*, c.mobile_ciphertext, c.mobile_hash AS contact_mobile_hash, c.wechat_openid,
                   {_REFUSED_TEMPLATES}, c.consent, c.opt_out_non_essential, c.urgent_ignores_quiet_hours,
                   c.channels AS contact_channels
            FROM notifications n LEFT JOIN contacts c ON c.patient_id = n.recipient WHERE n.id = $1""",
        notification_id)


async def sms_sends_since(conn: asyncpg.Connection, mobile_hash: str, since: datetime,
                          exclude: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT d.sent_at, n.template FROM deliveries d JOIN notifications n ON n.id = d.notification_id
           WHERE d.channel = 'sms' AND d.mobile_hash = $1 AND d.sent_at >= $2 AND d.id <> $3""",
        mobile_hash, since, exclude)


async def still_claimed(conn: asyncpg.Connection, delivery_id: uuid.UUID, claim: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT true FROM deliveries WHERE id = $1 AND status = 'SENDING' AND claim = $2",
                                    delivery_id, claim))


async def reschedule(conn: asyncpg.Connection, delivery_id: uuid.UUID, claim: uuid.UUID, due_at: datetime, *,
                     reason: str, vendor_code: str | None = None, count_attempt: bool = True,
                     unsettled_since: datetime | None = None, failed_pull: bool = False) -> bool:
    """SENDING under `claim` -> PENDING; False if it is no longer so. `unsettled_since`: the
    attempt begun then may have reached the vendor unanswered; `failed_pull`: a status pull
    about such an attempt failed (counted in settle_pulls)."""
    result = await conn.execute(
        """UPDATE deliveries SET status = 'PENDING', due_at = $2, lease_until = NULL, status_reason = $3,
                  vendor_code = COALESCE($4, vendor_code),
                  attempts = CASE WHEN $5 THEN attempts ELSE attempts - 1 END,
                  unsettled_since = COALESCE($7, unsettled_since),
                  settle_pulls = settle_pulls + CASE WHEN $8 THEN 1 ELSE 0 END, updated_at = now()
           WHERE id = $1 AND status = 'SENDING' AND claim = $6""",
        delivery_id, due_at, reason, vendor_code, count_attempt, claim, unsettled_since, failed_pull)
    return result.endswith(" 1")


async def settled(conn: asyncpg.Connection, delivery_id: uuid.UUID, claim: uuid.UUID) -> bool:
    """No earlier attempt's fate is open any more (the vendor has no report of it, or it will
    not be asked again); False if the delivery is no longer SENDING under `claim`."""
    result = await conn.execute(
        """UPDATE deliveries SET unsettled_since = NULL, settle_pulls = 0, updated_at = now()
           WHERE id = $1 AND status = 'SENDING' AND claim = $2""", delivery_id, claim)
    return result.endswith(" 1")


async def finish(conn: asyncpg.Connection, delivery_id: uuid.UUID, claim: uuid.UUID, status: DeliveryStatus, *,
                 reason: str = "", vendor_code: str | None = None, vendor_message_id: str | None = None,
                 sent_at: datetime | None = None, mobile_hash: str | None = None,
                 count_attempt: bool = True) -> bool:
    """SENDING under `claim` -> SENT / FAILED / CANCELLED / FELL_BACK; False if a receipt, a
    cancellation or a later claim (this one's lease ran out) already moved it."""
    result = await conn.execute(
        """UPDATE deliveries SET status = $2, status_reason = NULLIF($3, ''),
                  vendor_code = COALESCE($4, vendor_code), vendor_message_id = COALESCE($5, vendor_message_id),
                  sent_at = COALESCE($6, sent_at), mobile_hash = COALESCE($7, mobile_hash),
                  attempts = CASE WHEN $9 THEN attempts ELSE attempts - 1 END,
                  lease_until = NULL, unsettled_since = NULL, updated_at = now()
           WHERE id = $1 AND status = 'SENDING' AND claim = $8""",
        delivery_id, status.value, reason, vendor_code, vendor_message_id, sent_at, mobile_hash, claim, count_attempt)
    return result.endswith(" 1")


# --------------------------------------------------------------------- receipts


async def record_receipt(conn: asyncpg.Connection, *, vendor: str, vendor_message_id: str, phone_hash: str,
                         code: str, delivered: bool) -> bool:
    return bool(await conn.fetchval(
        """INSERT INTO receipts (vendor, vendor_message_id, phone_hash, code, delivered)
           VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING RETURNING true""",
        vendor, vendor_message_id, phone_hash, code, delivered))


async def find_delivery_for_receipt(conn: asyncpg.Connection, vendor: str, vendor_message_id: str,
                                    out_id: str | None) -> asyncpg.Record | None:
    if out_id:
        try:
            row = await conn.fetchrow("SELECT * FROM deliveries WHERE id = $1 FOR UPDATE", uuid.UUID(out_id))
        except ValueError:
            row = None
        if row is not None:
            return row
    return await conn.fetchrow("SELECT * FROM deliveries WHERE vendor = $1 AND vendor_message_id = $2 FOR UPDATE",
                               vendor, vendor_message_id)


async def apply_receipt(conn: asyncpg.Connection, delivery_id: uuid.UUID, status: DeliveryStatus, code: str,
                        at: datetime) -> bool:
    """SENT -> DELIVERED | FAILED | FELL_BACK by a receipt; one for a final delivery changes nothing.
    A receipt also settles a delivery still SENDING or PENDING again: an attempt whose answer
    was lost (a read timeout) did reach the vendor, and its retry must not go out."""
    result = await conn.execute(
        """UPDATE deliveries SET status = $2::text,
                  delivered_at = CASE WHEN $2::text = 'DELIVERED' THEN $4::timestamptz END,
                  status_reason = CASE WHEN $2::text = 'DELIVERED' THEN status_reason ELSE 'receipt: ' || $3::text END,
                  updated_at = now()
           WHERE id = $1 AND status IN ('SENT', 'SENDING', 'PENDING')""",
        delivery_id, status.value, code, at)
    return result.endswith(" 1")


async def link_receipt(conn: asyncpg.Connection, vendor: str, vendor_message_id: str, phone_hash: str,
                       code: str, delivery_id: uuid.UUID) -> None:
    await conn.execute("UPDATE receipts SET delivery_id = $5 WHERE vendor=$1 AND vendor_message_id=$2 "
                       "AND phone_hash=$3 AND code=$4", vendor, vendor_message_id, phone_hash, code, delivery_id)
