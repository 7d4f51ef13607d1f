"""Synthetic patients: ID numbers with a valid GB 11643 check digit, mobiles."""
from __future__ import annotations

import random

from services.referral.domain.validators import id_check_digit

_rng = random.Random()


def id_number(born: str = "", male: bool | None = None) -> str:
    """A fake resident ID: region 622401, birth date `born` (YYYYMMDD), valid check digit."""
    born = born or f"{_rng.randint(1940, 2015)}{_rng.randint(1, 12):02d}{_rng.randint(1, 28):02d}"
    seq = _rng.randint(0, 99)
    sex = _rng.choice([1, 3, 5, 7, 9]) if male or (male is None and _rng.random() < .5) else _rng.choice([0, 2, 4, 6, 8])
    first17 = f"622401{born}{seq:02d}{sex}"
    return first17 + id_check_digit(first17)


def mobile() -> str:
    return f"13{_rng.randint(0, 9)}{_rng.randint(0, 99999999):08d}"
