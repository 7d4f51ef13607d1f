"""What a plaintext patient identifier looks like: one place for every PII scan."""
from __future__ import annotations

import re
from datetime import date

# Bounded by non-alphanumerics: eleven digits inside a hex digest or a base64 ciphertext
# are not a phone number (the session's dump holds thousands of those).
MOBILE = re.compile(r"(?<![0-9A-Za-z])1[3-9]\d{9}(?![0-9A-Za-z])")
ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def has_pii(text: str) -> bool:
    """The conservative test (any number shaped like one): what log lines must never hold."""
    return bool(MOBILE.search(text) or ID_NUMBER.search(text))


def is_id_number(value: str) -> bool:
    """A resident ID by GB 11643: a real birth date and a valid check character, so that
    vendor message ids and other 18-digit numbers in a dump are not taken for one."""
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    check = _CHECK[sum(int(d) * w for d, w in zip(value[:17], _WEIGHTS)) % 11]
    return 1900 <= born.year and born <= date.today() and value[17].upper() == check


def find_pii(text: str) -> list[str]:
    """Every unmasked mobile or ID number in the text."""
    return MOBILE.findall(text) + [v for v in ID_NUMBER.findall(text) if is_id_number(v)]
