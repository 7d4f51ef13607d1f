"""The consortium office's report of the day: text for the terminal, HTML with inline SVG."""
from __future__ import annotations

import html
import statistics
from collections import Counter, defaultdict
from datetime import datetime

from notify.v1 import notify_service_pb2 as npb
from referral.v1 import types_pb2 as rtypes
from scheduling.v1 import scheduling_service_pb2 as spb
from services.scheduling.domain import calendar

from .day import URGENCY_NAMES, DayResult

RESOURCE = {spb.RESOURCE_TYPE_OUTPATIENT: "outpatient 门诊号源", spb.RESOURCE_TYPE_EXAM: "exam 特检通道",
            spb.RESOURCE_TYPE_BED: "bed 床位"}
CHANNEL = {npb.CHANNEL_WECHAT: "WeChat 微信", npb.CHANNEL_SMS: "SMS 短信"}
SEGMENTS = (("booked", "#2b8a3e"), ("released", "#1971c2"), ("wasted", "#e03131"), ("open", "#ced4da"))
URGENCY_COLOURS = ("#e03131", "#f08c00", "#1971c2")


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{hours:.1f} h"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:5.1f} %" if whole else "    - "


def _q(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def waits_by_urgency(result: DayResult) -> dict[int, list[float]]:
    """Hours from the clinic's referral to the first appointment."""
    out: dict[int, list[float]] = defaultdict(list)
    for c in result.cases:
        if c.items and c.created:
            first = min(i.start_time.ToDatetime() for i in c.items)
            out[c.info["urgency"]].append((first - c.created).total_seconds() / 3600)
    return out


def trips(result: DayResult) -> Counter:
    return Counter(len({calendar.local_date(i.start_time.ToDatetime(calendar.LOCAL)) for i in c.items})
                   for c in result.cases if c.items)


def waitlist_lines(cases) -> list[str]:
    """Each waiting referral's reason as its clinic reads it, the same sentences counted once."""
    reasons = Counter((c.waitlist_reason, c.info["urgency"]) for c in cases
                      if c.state == rtypes.REFERRAL_STATE_WAITLISTED)
    return [f"    {n} {URGENCY_NAMES[u]}: {text or '-'}" for (text, u), n in
            sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))]


def text_report(result: DayResult, elapsed: float) -> str:
    st, cases = result.stats, result.cases
    up_states = Counter(rtypes.ReferralState.Name(c.state).removeprefix("REFERRAL_STATE_").lower() for c in cases)
    L = [f"示范县医共体 · 一天的双向转诊 / DEMO county consortium (1+12), a day on {result.started:%Y-%m-%d}",
         f"simulated in {elapsed:.0f} s through the public gRPC APIs; {sum(result.actions.values())} calls", "",
         "Referrals 转诊",
         f"  up 上转 {st.up_count:4d}   down 下转 {st.down_count:4d}   kept inside 县域内就诊 {st.kept_inside_share:.1%}"
         f"   rejected {st.rejected_share:.1%}   returned {st.returned_share:.1%}   no-show 爽约 {st.no_show_share:.1%}",
         "  up-referrals by final state: " + ", ".join(f"{k} {v}" for k, v in sorted(up_states.items())),
         *waitlist_lines(cases),
         f"  acceptance (submit->accept) median {_duration(st.acceptance.median_hours)},"
         f" scheduling (accept->booked) median {_duration(st.scheduling.median_hours)}", "",
         "Time to appointment 转诊到就诊 (hours, by urgency)",
         f"  {'urgency':<16}{'booked':>7}{'median':>9}{'p90':>9}{'max':>9}"]
    waits = waits_by_urgency(result)
    for u, name in URGENCY_NAMES.items():
        w = waits.get(u, [])
        if w:
            L.append(f"  {name:<14}{len(w):7d}{statistics.median(w):9.1f}{_q(w, .9):9.1f}{max(w):9.1f}")
    t = trips(result)
    n = sum(t.values())
    L += ["", "Trips per patient 跑几次 (distinct days at the hospital)",
          "  " + "   ".join(f"{k} trip{'s' if k > 1 else ''}: {v} ({_pct(v, n).strip()})" for k, v in sorted(t.items()))
          + (f"   mean {sum(k * v for k, v in t.items()) / n:.2f}" if n else ""), "",
          "Reserved capacity 预留资源 (next 14 days, lead hospital)",
          f"  {'resource':<20}{'pool':<10}{'places':>7}{'booked':>8}{'released':>9}{'wasted':>8}{'no-show':>8}"
          f"{'open':>7}{'used':>9}"]
    for p in sorted(result.utilization.pools, key=lambda p: (p.resource_type, p.pool)):
        L.append(f"  {RESOURCE.get(p.resource_type, '?'):<18}{p.pool:<10}{p.places:7d}{p.booked:8d}{p.released:9d}"
                 f"{p.wasted:8d}{p.no_show:8d}{p.open:7d}{_pct(p.booked, p.places):>9}")
    d = result.deliveries
    L += ["", f"Notifications 患者通知: {d.notifications} messages, {d.skipped} not sent (no consent/contact)",
          f"  {'channel':<14}{'vendor':<9}{'sent':>6}{'deliv.':>7}{'failed':>7}{'fell back':>10}{'pending':>8}"
          f"{'cancelled':>10}{'delivered':>10}"]
    for c in d.channels:
        # `sent`: with the vendor, no receipt yet; the rate is delivered / (sent + delivered + failed).
        L.append(f"  {CHANNEL.get(c.channel, '?'):<12}{c.vendor:<9}{c.sent:6d}{c.delivered:7d}{c.failed:7d}"
                 f"{c.fell_back:10d}{c.pending:8d}{c.cancelled:10d}{c.delivery_rate * 100:9.1f}%")
    templates = Counter(m.get("template_id") or m.get("template_code") or "?" for m in result.messages)
    L.append("  received by the patients' phones: " + ", ".join(f"{k} {v}" for k, v in templates.most_common()))
    L += ["", "Calls 操作: " + ", ".join(f"{k} {v}" for k, v in sorted(result.actions.items()))]
    return "\n".join(L)


# ---------------------------------------------------------------------- SVG


def _bars(title: str, labels: list[str], series: list[tuple[str, str, list[float]]], *, stacked: bool,
          unit: str = "") -> str:
    """A bar chart as inline SVG: stacked or grouped, one colour per series, with a legend."""
    w, h, left, bottom, top = 760, 280, 48, 40, 34
    plot_w, plot_h = w - left - 12, h - bottom - top
    totals = ([sum(v[i] for _, _, v in series) for i in range(len(labels))] if stacked
              else [max((v[i] for _, _, v in series), default=0) for i in range(len(labels))])
    peak = max(totals + [1])
    band = plot_w / max(1, len(labels))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for k in range(5):
        y = top + plot_h - plot_h * k / 4
        out.append(f'<line x1="{left}" x2="{w - 12}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{peak * k / 4:.0f}{unit}</text>')
    for i, label in enumerate(labels):
        x0 = left + i * band
        base = top + plot_h
        for j, (name, colour, values) in enumerate(series):
            v = values[i]
            bh = plot_h * v / peak
            if stacked:
                x, bw, y = x0 + band * 0.15, band * 0.7, base - bh
                base = y
            else:
                bw = band * 0.8 / len(series)
                x, y = x0 + band * 0.1 + j * bw, top + plot_h - bh
            if v:
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{bh:.1f}" fill="{colour}">'
                           f'<title>{html.escape(label)} {html.escape(name)}: {v:g}</title></rect>')
        out.append(f'<text x="{x0 + band / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{html.escape(label)}</text>')
    lx = left
    for name, colour, _ in series:
        out.append(f'<rect x="{lx}" y="{h - 14}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{lx + 14}" y="{h - 5}">{html.escape(name)}</text>')
        lx += 24 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


def capacity_charts(result: DayResult) -> list[str]:
    charts = []
    for pool in ("reserved", "overflow"):
        labels = [f"{d:%m-%d}" for d, _ in result.by_day]
        series = []
        for seg, colour in SEGMENTS:
            series.append((seg, colour, [sum(getattr(p, seg) for p in u.pools if p.pool == pool)
                                         for _, u in result.by_day]))
        charts.append(_bars(f"Reserved capacity by day — {pool} pool (places: outpatient + exam + bed-nights)",
                            labels, series, stacked=True))
    return charts


def waiting_chart(result: DayResult) -> str:
    waits = waits_by_urgency(result)
    horizon = int(max((max(v) for v in waits.values() if v), default=24) // 24) + 1
    labels = [f"{d}-{d + 1} d" for d in range(horizon)]
    series = []
    for (u, name), colour in zip(URGENCY_NAMES.items(), URGENCY_COLOURS):
        counts = Counter(int(h // 24) for h in waits.get(u, []))
        series.append((name, colour, [counts.get(d, 0) for d in range(horizon)]))
    return _bars("Waiting time from referral to first appointment, by urgency (patients per day band)",
                 labels, series, stacked=False)


def html_report(result: DayResult, text: str) -> str:
    charts = "".join(f"<figure>{svg}</figure>" for svg in [*capacity_charts(result), waiting_chart(result)])
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>医共体转诊日报 · consortium day report</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:2em auto;color:#212529}}
pre{{background:#f8f9fa;padding:1em;overflow-x:auto;font-size:12px}}figure{{margin:1.5em 0}}</style></head>
<body><h1>示范县医共体 · 转诊日报</h1><p>Generated {datetime.now():%Y-%m-%d %H:%M} by <code>make demo</code>;
synthetic data only.</p>{charts}<h2>Report</h2><pre>{html.escape(text)}</pre></body></html>
"""
