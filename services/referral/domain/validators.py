"""Input rules for patient identifiers, codes and dates. Pure: no I/O.

Each check returns a Chinese description of what is wrong, or "" when the value is
good, so the service layer can collect every bad field before raising once.
"""
from __future__ import annotations

import re
from datetime import date

# GB 11643-1999: weights 2^(17-i) mod 11 and the check character table.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_ID_SHAPE = re.compile(r"^\d{17}[\dX]$")
_MOBILE = re.compile(r"^1[3-9]\d{9}$")
# A letter (not U), two digits, optionally a dot and up to four more characters.
_ICD10 = re.compile(r"^[A-TV-Z]\d{2}(\.[0-9A-Z]{1,4})?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_EARLIEST = date(1900, 1, 1)


def id_check_digit(first17: str) -> str:
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return _ID_CHECK[total % 11]


def normalise_id_number(value: str) -> str:
    return value.strip().upper()


def id_number_error(value: str, today: date) -> str:
    value = normalise_id_number(value)
    if not _ID_SHAPE.match(value):
        return "身份证号应为18位，前17位为数字，最后一位为数字或X"
    try:
        born = birth_date_of(value)
    except ValueError:
        return "身份证号中的出生日期无效"
    if born < _EARLIEST or born > today:
        return "身份证号中的出生日期超出范围"
    if id_check_digit(value[:17]) != value[17]:
        return "身份证号校验码错误"
    return ""


def birth_date_of(id_number: str) -> date:
    return date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))


def is_male(id_number: str) -> bool:
    # The 17th digit (sequence code) is odd for men.
    return int(id_number[16]) % 2 == 1


def age_on(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def mobile_error(value: str) -> str:
    return "" if _MOBILE.match(value.strip()) else "手机号应为11位中国大陆手机号"


def normalise_icd10(value: str) -> str:
    return value.strip().upper()


def icd10_error(value: str) -> str:
    return "" if _ICD10.match(normalise_icd10(value)) else "ICD-10编码格式错误（如 I10、E11.9）"


def token_error(value: str, what: str = "编号") -> str:
    return "" if _TOKEN.match(value) else f"{what}只能包含字母、数字、下划线和连字符（1-40位）"


def date_error(value: date | None, *, earliest: date, latest: date) -> str:
    if value is None:
        return "日期无效"
    if value < earliest or value > latest:
        return f"日期应在 {earliest.isoformat()} 至 {latest.isoformat()} 之间"
    return ""


def mask_name(name: str) -> str:
    name = name.strip()
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]
