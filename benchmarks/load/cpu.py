"""CPU time of each part of the running system, read from /proc: what one call costs,
and who pays for it (a throughput ceiling on a machine with N cores is N seconds of CPU
per second, shared by everything on this list)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += _children(p)
    return found


def _seconds(pid: int) -> float:
    """User + system CPU of a process (its live children are in the tree)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def snapshot(roots: dict[str, int]) -> dict[str, dict[int, float]]:
    """Per part, the CPU seconds of every process in its tree, by pid (a backend that
    starts during a phase counts from zero; one that exits during it is lost, so pooled
    connections, which live through the phase, are what this measures well)."""
    trees = {name: _tree(pid) for name, pid in roots.items()}
    # A process belongs to the narrowest tree that holds it: the services are children of
    # the benchmark process, and count as themselves, not as the client.
    owner: dict[int, str] = {}
    for name, tree in sorted(trees.items(), key=lambda kv: -len(kv[1])):
        for p in tree:
            owner[p] = name
    return {name: {p: _seconds(p) for p in tree if owner[p] == name} for name, tree in trees.items()}


def per_call_ms(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]],
                calls: int) -> dict[str, float]:
    if not calls:
        return {}
    out = {}
    for name, pids in after.items():
        spent = sum(sec - before.get(name, {}).get(pid, 0.0) for pid, sec in pids.items())
        out[name] = round(1000 * spent / calls, 3)
    out["total"] = round(sum(out.values()), 3)
    return out


def postmaster_pid(pgdata: Path) -> int | None:
    """PostgreSQL runs detached (pg_ctl): its pid is the first line of postmaster.pid."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
