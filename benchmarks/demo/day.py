"""A day of the DEMO county consortium ("1+12"), driven through the public gRPC APIs as
the clinics, the referral desk and the bed managers would drive it."""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import grpc

from common.v1 import types_pb2 as common
from notify.v1 import notify_service_pb2 as npb
from referral.v1 import referral_service_pb2 as api
from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import scheduling_service_pb2 as spb
from services.referral import demo as referral_demo
from services.scheduling import demo as scheduling_demo
from services.scheduling.domain import calendar

from .patients import pdate, up_referral
from .system import System

S = rtypes.ReferralState
HOSPITAL = scheduling_demo.HOSPITAL
CLINICS = scheduling_demo.CLINICS
# Nearer townships refer more (Baicheng: the farthest is 170 km away).
CLINIC_WEIGHTS = [1 / (km ** 0.5) for km in referral_demo.DISTANCES_KM]
SETTLED = {S.REFERRAL_STATE_SCHEDULED, S.REFERRAL_STATE_WAITLISTED, S.REFERRAL_STATE_CANCELLED}


@dataclass
class DayOptions:
    referrals: int = 150
    seed: int = 20240601
    concurrency: int = 16
    accept_share: float = 0.85
    return_share: float = 0.08
    cancel_share: float = 0.05
    no_show_share: float = 0.08
    occupied_share: float = 0.6
    settle_seconds: float = 30.0


@dataclass
class Case:
    request: api.CreateReferralRequest
    info: dict
    clinic: str
    name: str = ""
    created: datetime | None = None
    state: int = 0
    items: list = field(default_factory=list)
    down: str = ""
    waitlist_reason: str = ""


@dataclass
class DayResult:
    cases: list[Case]
    stats: api.ReferralStats
    utilization: spb.Utilization
    by_day: list[tuple[date, spb.Utilization]]
    deliveries: npb.DeliveryStats
    messages: list[dict]
    actions: Counter
    started: datetime


class Day:
    def __init__(self, system: System, opts: DayOptions, progress=None) -> None:
        self.sys = system
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.today = calendar.local_date(datetime.now(calendar.LOCAL))
        self.actions: Counter = Counter()
        self.refusals: Counter = Counter()
        self._progress = progress
        self._gate = asyncio.Semaphore(opts.concurrency)

    # ---------------------------------------------------------------- helpers

    def md(self, institution: str, role: str = "") -> tuple:
        role = role or ("referral_desk" if institution == HOSPITAL else "clinic_doctor")
        return self.sys.metadata(institution, role)

    def tick(self, what: str, n: int = 1) -> None:
        self.actions[what] += n
        if self._progress is not None:
            self._progress.update(n)
            self._progress.set_postfix_str(what)

    async def _call(self, what: str, coro):
        async with self._gate:
            try:
                return await coro
            except grpc.aio.AioRpcError as exc:
                # A refused step is part of the day (e.g. the scheduler moved first): count it.
                self.actions[f"{what} refused: {exc.code().name}"] += 1
                self.refusals[exc.details()[:120]] += 1
                return None
            finally:
                self.tick(what)

    async def _get(self, case: Case) -> api.Referral:
        return await self.sys.referral.GetReferral(api.GetReferralRequest(name=case.name), metadata=self.md(case.clinic))

    async def _until(self, cases: list[Case], done, timeout: float) -> None:
        """Poll the referrals until each satisfies `done` (or the time is up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting = list(cases)
        while waiting and loop.time() < deadline:
            fresh = await asyncio.gather(*(self._get(c) for c in waiting))
            for case, r in zip(waiting, fresh):
                case.state, case.items, case.waitlist_reason = r.state, list(r.scheduled_items), r.waitlist_reason
            waiting = [c for c in waiting if not done(c)]
            if waiting:
                await asyncio.sleep(0.5)

    # ---------------------------------------------------------------- the day

    async def bed_board_morning(self) -> list[spb.BedState]:
        """Night shift hands over: most regular beds are occupied, discharges expected."""
        beds = self.md(HOSPITAL, "bed_manager")
        board = await self.sys.scheduling.GetBedBoard(spb.GetBedBoardRequest(hospital_id=HOSPITAL), metadata=beds)
        regular = [b for b in board.beds if b.status == spb.BED_STATUS_FREE and not b.bed_id.endswith("-04-1")]
        occupied = self.rng.sample(regular, int(len(regular) * self.opts.occupied_share))
        await asyncio.gather(*(self._call("bed occupied", self.sys.scheduling.UpdateBedStatus(spb.UpdateBedStatusRequest(
            bed_id=b.bed_id, status=spb.BED_STATUS_OCCUPIED, reason="在院患者",
            expected_discharge_date=pdate(self.today + timedelta(days=self.rng.randint(0, 4)))), metadata=beds))
            for b in occupied))
        return occupied

    async def morning_burst(self) -> list[Case]:
        cases = []
        for _ in range(self.opts.referrals):
            clinic = self.rng.choices(CLINICS, CLINIC_WEIGHTS)[0]
            request, info = up_referral(self.rng, clinic, HOSPITAL, self.today)
            cases.append(Case(request, info, clinic))

        async def create(case: Case) -> None:
            r = await self._call("referral created", self.sys.referral.CreateReferral(
                case.request, metadata=self.md(case.clinic)))
            if r is not None:
                case.name, case.state, case.created = r.name, r.state, r.create_time.ToDatetime()
        await asyncio.gather(*(create(c) for c in cases))
        return [c for c in cases if c.name]

    async def triage(self, cases: list[Case]) -> list[Case]:
        """The referral desk works through the queue; returned ones come back completed."""
        o = self.opts
        accepted, returned = [], []
        calls = []
        for case in cases:
            roll = self.rng.random()
            if roll < o.accept_share:
                accepted.append(case)
                calls.append(self._call("accepted", self.sys.referral.AcceptReferral(
                    api.AcceptReferralRequest(name=case.name), metadata=self.md(HOSPITAL))))
            elif roll < o.accept_share + o.return_share:
                returned.append(case)
                calls.append(self._call("returned", self.sys.referral.ReturnReferral(api.ReturnReferralRequest(
                    name=case.name, reason="请补充近期血常规结果"), metadata=self.md(HOSPITAL))))
            else:
                calls.append(self._call("rejected", self.sys.referral.RejectReferral(api.RejectReferralRequest(
                    name=case.name, reason="病情适合在基层继续治疗"), metadata=self.md(HOSPITAL))))
        await asyncio.gather(*calls)
        await asyncio.gather(*(self._call("resubmitted", self.sys.referral.ResubmitReferral(api.ResubmitReferralRequest(
            name=c.name, additional_information="已补充血常规：合成数据"), metadata=self.md(c.clinic))) for c in returned))
        await asyncio.gather(*(self._call("accepted", self.sys.referral.AcceptReferral(
            api.AcceptReferralRequest(name=c.name, note="补充材料齐全"), metadata=self.md(HOSPITAL))) for c in returned))
        return accepted + returned

    async def cancellations(self, cases: list[Case]) -> list[Case]:
        scheduled = [c for c in cases if c.state == S.REFERRAL_STATE_SCHEDULED]
        gone = self.rng.sample(scheduled, int(len(scheduled) * self.opts.cancel_share))
        await asyncio.gather(*(self._call("cancelled by clinic", self.sys.referral.CancelReferral(
            api.CancelReferralRequest(name=c.name, reason="患者选择就近就医"), metadata=self.md(c.clinic))) for c in gone))
        return gone

    async def discharges(self, occupied: list[spb.BedState]) -> None:
        """Ward rounds: today's discharges free their beds, which re-runs the waitlist."""
        beds = self.md(HOSPITAL, "bed_manager")
        leaving = [b for b in occupied if self.rng.random() < 0.5]
        await asyncio.gather(*(self._call("bed freed", self.sys.scheduling.UpdateBedStatus(spb.UpdateBedStatusRequest(
            bed_id=b.bed_id, status=spb.BED_STATUS_FREE, reason="出院"), metadata=beds)) for b in leaving))

    async def visits(self, cases: list[Case]) -> None:
        """The patients come (or not); the hospital closes the loop, some go back down."""
        due = [c for c in cases if c.state == S.REFERRAL_STATE_SCHEDULED]
        came = []
        for case in due:
            if self.rng.random() < self.opts.no_show_share:
                await self._call("no-show", self.sys.referral.RecordNoShow(
                    api.RecordNoShowRequest(name=case.name, note="未按时到诊"), metadata=self.md(HOSPITAL)))
            else:
                came.append(case)
        await asyncio.gather(*(self._call("arrived", self.sys.referral.RecordArrival(
            api.RecordArrivalRequest(name=c.name), metadata=self.md(HOSPITAL))) for c in came))

        async def complete(case: Case) -> None:
            down = None
            if case.info["catalogue"] or self.rng.random() < 0.2:
                follow = self.today + timedelta(days=self.rng.randint(7, 21))
                down = api.DownReferralProposal(
                    care_plan="按医嘱服药，每两周随访血压血糖", follow_up_dates=[pdate(follow)],
                    consent=api.Consent(given=True, method="签字"), purpose=rtypes.REFERRAL_PURPOSE_REHABILITATION)
            r = await self._call("completed", self.sys.referral.CompleteReferral(api.CompleteReferralRequest(
                name=case.name, completion=api.Completion(findings="合成数据", treatment_summary="合成数据",
                                                          recommendations="基层随访"), down_referral=down),
                metadata=self.md(HOSPITAL)))
            if r is not None and r.completion.down_referral:
                case.down = r.completion.down_referral
                await self._call("down-referral accepted", self.sys.referral.AcceptReferral(
                    api.AcceptReferralRequest(name=case.down), metadata=self.md(case.clinic)))
        await asyncio.gather(*(complete(c) for c in came))

    async def settle_messages(self, timeout: float) -> None:
        """Until the vendors have heard nothing new for two seconds."""
        loop = asyncio.get_running_loop()
        deadline, last, quiet_since = loop.time() + timeout, -1, loop.time()
        while loop.time() < deadline:
            n = len(self.sys.messages())
            if n != last:
                last, quiet_since = n, loop.time()
            elif loop.time() - quiet_since > 2:
                return
            await asyncio.sleep(0.3)

    async def run(self) -> DayResult:
        started = datetime.now(calendar.LOCAL)
        occupied = await self.bed_board_morning()
        cases = await self.morning_burst()
        in_care = await self.triage(cases)
        await self._until(in_care, lambda c: c.state in SETTLED, self.opts.settle_seconds)
        await self.cancellations(in_care)
        await self.discharges(occupied)
        await asyncio.sleep(2)  # re-optimisation of the waitlist after the freed places
        await self._until(in_care, lambda c: c.state != S.REFERRAL_STATE_ACCEPTED, self.opts.settle_seconds)
        scheduled_items = {c.name: list(c.items) for c in in_care}
        await self.visits(in_care)
        await self._until(cases, lambda c: True, 5)
        for c in in_care:
            c.items = c.items or scheduled_items.get(c.name, [])
        await self.settle_messages(self.opts.settle_seconds)
        return await self.collect(cases, started)

    async def collect(self, cases: list[Case], started: datetime) -> DayResult:
        office = self.sys.metadata(referral_demo.CONSORTIUM, "consortium_office")
        desk = self.md(HOSPITAL)
        today = pdate(self.today)
        stats = await self.sys.referral.GetReferralStats(api.GetReferralStatsRequest(
            consortium=f"consortiums/{referral_demo.CONSORTIUM}", start_date=today, end_date=today), metadata=office)
        last = self.today + timedelta(days=scheduling_demo.DAYS - 1)
        util = await self.sys.scheduling.GetUtilization(spb.GetUtilizationRequest(
            hospital_id=HOSPITAL, from_date=today, to_date=pdate(last)), metadata=desk)
        days = [self.today + timedelta(days=k) for k in range(scheduling_demo.DAYS)]
        by_day = await asyncio.gather(*(self.sys.scheduling.GetUtilization(spb.GetUtilizationRequest(
            hospital_id=HOSPITAL, from_date=pdate(d), to_date=pdate(d)), metadata=desk) for d in days))
        deliveries = await self.sys.notify.GetDeliveryStats(npb.GetDeliveryStatsRequest(
            start_date=today, end_date=today), metadata=office)
        return DayResult(cases, stats, util, list(zip(days, by_day)), deliveries, self.sys.messages(),
                         self.actions, started)


URGENCY_NAMES = {common.URGENCY_EMERGENCY: "emergency 急诊", common.URGENCY_URGENT: "urgent 加急",
                 common.URGENCY_ROUTINE: "routine 普通"}
