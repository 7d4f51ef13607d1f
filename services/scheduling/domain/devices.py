"""One device serves one exam channel at a time (pure, no I/O).

An exam channel is one device in one room. A hospital may run several channels on one
device (plain CT in the morning, contrast CT in the afternoon), but only at different
times: the engine books each channel's slots on their own, so two channels whose windows
overlap on one device would have it book two patients on the device at once.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Window:
    """A channel's time on its device one day, [start, end) in minutes after midnight.

    `rank` is the position in the request of what sets the window (its own capacity, or
    the channel's move to this device), -1 when the request leaves it as stored; `field`
    is that request field."""
    channel_id: str
    device_id: str
    day: date
    start: int
    end: int
    rank: int = -1
    field: str = ""


def device_clashes(windows: Iterable[Window]) -> list[tuple[Window, Window]]:
    """(clashing, holder) for two windows that put one device in two channels at
    overlapping times of one day. The clashing one is the one the request set last: the
    caller names its field and says the device already belongs to the holder.

    A window without a device or without length holds nothing. Two windows the request
    leaves as stored are not its to answer for (capacity published before the rule may
    hold some), so they never refuse it."""
    by_device: dict[tuple[str, date], list[Window]] = defaultdict(list)
    for w in windows:
        if w.device_id and w.start < w.end:
            by_device[(w.device_id, w.day)].append(w)
    found = []
    for group in by_device.values():
        group.sort(key=lambda w: (w.start, w.end, w.rank))
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if b.start >= a.end:
                    break  # sorted by start: no later window reaches back into a
                if a.channel_id != b.channel_id and max(a.rank, b.rank) >= 0:
                    found.append((b, a) if b.rank > a.rank else (a, b))
    found.sort(key=lambda pair: (pair[0].rank, pair[0].day, pair[1].start))
    return found
