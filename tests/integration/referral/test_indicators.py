"""The consortium office's indicators and the SLA check across a referral's whole history:
a rebook after a no-show, a cancelled booking, a waitlisting of a booked referral."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

from services.common.auth import Caller, Role
from services.referral.adapters import requests as parse
from services.referral.domain.model import Referral
from services.referral.service_layer import editing, queries
from services.referral.service_layer.services import ReferralService

HOUR, DAY = timedelta(hours=1), timedelta(days=1)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Desk:
    """The world's clinic and hospital acting through one service on a settable clock."""

    def __init__(self, world, referral_app) -> None:
        # Day 0 at 10:00 in Shanghai, three weeks back so that every later step is still past.
        day0 = datetime.combine((datetime.now(timezone.utc) - 21 * DAY).date(), time(2), timezone.utc)
        self.day0 = day0
        self.clock = Clock(day0)
        self.svc = ReferralService(referral_app.ctx.pool, referral_app.ctx.pii, clock=self.clock)
        self.world = world
        self.clinic = Caller("dr-clinic", world.clinics[0], Role.CLINIC_DOCTOR)
        self.hospital = Caller("desk-hospital", world.hospital, Role.REFERRAL_DESK)
        self.office = Caller("office", world.consortium, Role.CONSORTIUM_OFFICE)

    def at(self, offset: timedelta) -> ReferralService:
        self.clock.now = self.day0 + offset
        return self.svc

    async def submitted(self) -> Referral:
        return await self.at(timedelta()).create(self.clinic, parse.create_referral(
            self.world.request(), self.clinic.subject, self.clock()))

    async def scheduling_event(self, offset: timedelta, referral: Referral, step) -> None:
        svc = self.at(offset)
        async with svc.pool.acquire() as conn, conn.transaction():
            assert await svc.apply_scheduling(conn, referral.id, referral.hospital_id,
                                              lambda r, a, now: step(r, a, now))

    async def scheduled(self, offset: timedelta, referral: Referral, booking_id: str) -> None:
        await self.scheduling_event(offset, referral, lambda r, a, now: r.schedule(a, now, booking_id, [], now))

    async def stats(self):
        return await queries.stats(self.svc, self.office, self.world.consortium, self.day0.date(), self.day0.date())

    async def scheduling_breaches(self, offset: timedelta, *referrals: Referral) -> list[str]:
        await self.at(offset).check_sla()
        rows = await self.svc.pool.fetch("SELECT referral_id FROM sla_breaches WHERE stage = 'scheduling' "
                                         "AND referral_id = ANY($1::text[])", [r.id for r in referrals])
        return [r["referral_id"] for r in rows]


async def test_a_rebook_after_a_no_show_keeps_the_first_acceptance_and_the_no_show(world, referral_app):
    desk = Desk(world, referral_app)
    r = await desk.submitted()
    await desk.at(HOUR).accept(desk.hospital, r.id, "")
    await desk.scheduled(DAY, r, "B1")
    await desk.at(7 * DAY).record_no_show(desk.hospital, r.id, "未到诊")
    rebooked = await editing.rebook(desk.at(8 * DAY), desk.hospital, r.id, "患者要求重新预约")
    assert rebooked.accepted_at == desk.day0 + HOUR

    stats = await desk.stats()
    # Time to accept is submission to the first acceptance, not to the rebook.
    assert stats.acceptance.count == 1 and abs(stats.acceptance.median_hours - 1) < 1e-6
    # So is time to schedule: first acceptance to the first booking.
    assert stats.scheduling.count == 1 and abs(stats.scheduling.median_hours - 23) < 1e-6
    # The patient did not come once: that stays counted after the rebook.
    assert stats.no_show_share == 1.0

    # The rebooked referral waits for its new booking from the rebook on (routine: 168 h).
    assert await desk.scheduling_breaches(8 * DAY + HOUR, r) == []
    assert await desk.scheduling_breaches(8 * DAY + 169 * HOUR, r) == [r.id]


async def test_a_referral_that_reached_its_visit_counts_once_in_the_no_show_share(world, referral_app):
    desk = Desk(world, referral_app)
    came, missed_then_came = await desk.submitted(), await desk.submitted()
    for r in (came, missed_then_came):
        await desk.at(HOUR).accept(desk.hospital, r.id, "")
    await desk.at(2 * DAY).record_no_show(desk.hospital, missed_then_came.id, "未到诊")
    await editing.rebook(desk.at(3 * DAY), desk.hospital, missed_then_came.id, "患者要求重新预约")
    for r in (came, missed_then_came):
        await desk.at(4 * DAY).record_arrival(desk.hospital, r.id)
    assert (await desk.stats()).no_show_share == 0.5


async def test_scheduling_sla_counts_from_when_the_referral_went_back_to_waiting(world, referral_app):
    """A cancelled booking puts the referral back to accepted, and the scheduler may waitlist
    a booked one: each waits for a booking again from then, not from its acceptance."""
    desk = Desk(world, referral_app)
    cancelled, waitlisted, never = await desk.submitted(), await desk.submitted(), await desk.submitted()
    for r in (cancelled, waitlisted, never):
        await desk.at(HOUR).accept(desk.hospital, r.id, "")
    await desk.scheduled(2 * HOUR, cancelled, "B1")
    await desk.scheduled(2 * HOUR, waitlisted, "B2")
    # Ten days later (past the routine 168 h scheduling target since the acceptance):
    await desk.scheduling_event(10 * DAY, cancelled,
                                lambda r, a, now: r.booking_cancelled(a, now, "B1", "医生停诊", now))
    await desk.scheduling_event(10 * DAY, waitlisted, lambda r, a, now: r.waitlist(a, now, "号源已满", now))

    assert await desk.scheduling_breaches(10 * DAY + HOUR, cancelled, waitlisted, never) == [never.id]
    assert sorted(await desk.scheduling_breaches(10 * DAY + 169 * HOUR, cancelled, waitlisted)) == sorted(
        [cancelled.id, waitlisted.id])
