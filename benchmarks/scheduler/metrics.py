"""Figures of one allocation, for the side-by-side tables."""

from __future__ import annotations

from services.scheduling.engine import ItemKind, Pool, Problem, Solution, Urgency

URGENT = (Urgency.EMERGENCY, Urgency.URGENT)


def _p90(values: list[int]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))])


def measure(problems: list[Problem], solutions: list[Solution]) -> dict[str, float]:
    """Aggregate over the hospitals of one consortium."""
    refs = [r for p in problems for r in p.referrals]
    by_id = {r.referral_id: r for r in refs}
    items: dict[str, dict] = {}
    for s in solutions:
        for a in s.assignments:
            items.setdefault(a.referral_id, {})[a.item_id] = a
    placed = set(items)
    waits: dict[Urgency, list[int]] = {u: [] for u in Urgency}
    trips = []
    for rid, its in items.items():
        r = by_id[rid]
        anchor = its.get("consultation") or its.get("admission") or max(its.values(), key=lambda a: a.day)
        waits[r.urgency].append(anchor.day - r.accepted_day)
        trips.append(len({a.day for a in its.values()}))
    reserved = 0
    for p in problems:
        reserved += sum(s.reserved_places for s in p.outpatient_slots)
        reserved += sum(1 for e in p.exam_slots if e.pool == Pool.RESERVED)
        reserved += sum(len(b.available_nights) if b.available_nights is not None else p.horizon_days for b in p.beds if b.pool == Pool.RESERVED)
    used = sum((len(a.nights) if a.kind == ItemKind.ADMISSION else 1) for s in solutions for a in s.assignments if a.pool == Pool.RESERVED)
    overflow = sum((len(a.nights) if a.kind == ItemKind.ADMISSION else 1) for s in solutions for a in s.assignments if a.pool == Pool.OVERFLOW)
    fulfilment = []
    for p in problems:
        demand: dict[str, int] = {}
        for r in p.referrals:
            demand[r.clinic_id] = demand.get(r.clinic_id, 0) + 1
        for q in p.quotas:
            target = min(q.places, demand.get(q.clinic_id, 0))
            if target:
                got = sum(1 for r in p.referrals if r.clinic_id == q.clinic_id and r.referral_id in placed)
                fulfilment.append(min(1.0, got / target))
    urgent = [r for r in refs if r.urgency in URGENT]
    out: dict[str, float] = {
        "referrals": len(refs),
        "placed_share": len(placed) / len(refs) if refs else 0.0,
        "urgent_within_deadline_share": sum(r.referral_id in placed for r in urgent) / len(urgent) if urgent else 1.0,
        "trips_per_patient": sum(trips) / len(trips) if trips else 0.0,
        "reserved_places": reserved,
        "reserved_used": used,
        "reserved_unused": reserved - used,
        "overflow_used": overflow,
        "worst_clinic_fulfilment": min(fulfilment) if fulfilment else 1.0,
        "objective": sum(s.objective for s in solutions),
        "solve_seconds": sum(s.solve_seconds for s in solutions),
    }
    for u in Urgency:
        w = waits[u]
        out[f"wait_mean_{u.value.lower()}"] = sum(w) / len(w) if w else float("nan")
        out[f"wait_p90_{u.value.lower()}"] = _p90(w)
    return out
