"""PAS importer on the real instance files, and the scorer and model on a hand-sized one."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.scheduling.engine import parse_pas, score_pas, solve_pas, solve_pas_greedy

# shared/ lies beside the repository, here and in CI.
PAS_DIR = Path(__file__).resolve().parents[5] / "shared" / "bench" / "pas"
FILES = sorted(PAS_DIR.glob("testdata*.txt"))

TINY = """ARTICLE BENCHMARK DATA SET
Rooms: 2
Roomproperties: 2
Beds: 3
Departments: 1
Specialisms: 1
Patients: 3
Planning horizon: 3

SPECIALISMS:
1 Spec1

DEPARTMENTS:
1 Dept1 0 0 | 1 1

ROOMPROPERTIES:
1 telemetry
2 oxygen

ROOMS:
1 Double | 2 | 1 | D | 1 1 | 0 0
2 Single | 1 | 1 | N | 1 1 | 1 0

BEDS:
1 1
2 1
3 2

PATIENTS:
1 Anna 40 F | 0 2 | 1 1 2 | 2 | 0 0 | 0 0
2 Bert 50 M | 0 2 | 1 1 2 | 2 | 0 0 | 0 0
3 Cleo 60 F | 1 2 | 1 1 1 | 2 | 1 0 | 0 0

END.
"""


@pytest.mark.skipif(not FILES, reason="PAS instances not present")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_real_instances_parse_and_counts_match_the_header(path):
    inst = parse_pas(path.read_text(), path.stem)
    assert len(inst.patients) == inst.header["Patients"]
    assert len(inst.beds) == inst.header["Beds"]
    assert len(inst.rooms) == inst.header["Rooms"]
    assert len(inst.departments) == inst.header["Departments"]
    assert inst.horizon == 14
    assert all(sum(n for _, n in p.parts) == p.departure - p.arrival for p in inst.patients)
    assert all(inst.beds[b] in inst.rooms for b in inst.beds)


@pytest.mark.skipif(not FILES, reason="PAS instances not present")
def test_greedy_on_a_real_instance_is_a_valid_schedule():
    inst = parse_pas(FILES[0].read_text(), FILES[0].stem)
    g = solve_pas_greedy(inst)
    assert g.cost == pytest.approx(sum(score_pas(inst, g.beds).values()))
    assert len(g.beds) == sum(1 for p in inst.patients if p.nights)


def test_importer_rejects_a_header_that_lies():
    with pytest.raises(ValueError):
        parse_pas(TINY.replace("Patients: 3", "Patients: 4"))


def test_scorer_counts_each_term_by_hand():
    inst = parse_pas(TINY, "tiny")
    # Anna and Bert share the D room both nights: 2 minority patient-nights = 10.
    # Cleo (needs telemetry) in the single room: no cost.
    terms = score_pas(inst, {1: (1, 1), 2: (2, 2), 3: (3,)})
    assert terms["gender"] == 10.0
    assert sum(terms.values()) == 10.0
    # Cleo in the double instead (no telemetry: 5), Anna moved to the single on night 1
    # (a transfer: 11); room 1 night 1 then holds Bert and Cleo: a gender conflict (5);
    # night 0 holds Anna and Bert (5).
    terms = score_pas(inst, {1: (1, 3), 2: (2, 2), 3: (1,)})
    assert terms["required_property"] == 5.0
    assert terms["transfer"] == 11.0
    assert terms["gender"] == 10.0
    with pytest.raises(ValueError):
        score_pas(inst, {1: (1, 1), 2: (1, 1), 3: (3,)})


def test_cpsat_finds_the_hand_optimum_and_proves_it():
    inst = parse_pas(TINY, "tiny")
    # The single room cannot hold Cleo and a two-night patient, so someone pays:
    # Anna and Bert together in the D room cost 2 x 5 (gender); Bert alone in the single
    # room and the two women in the D room cost only Cleo's missing telemetry, 5.
    r = solve_pas(inst, time_limit_seconds=5)
    assert r.status == "OPTIMAL"
    assert r.cost == 5.0 and r.bound == 5.0
    assert r.beds[2] == (3, 3)


def test_the_six_instances_are_found():
    # Guards the parametrised tests above: an empty glob would make them vanish silently.
    assert len(FILES) == 6, f"expected six PAS instances in {PAS_DIR}"
