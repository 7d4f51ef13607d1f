"""Versioned Chinese templates per event and channel, loaded from data, rendered purely.

A template's variables are filled from values the event handlers computed (times,
places, instructions); nothing else can reach a patient. Each SMS variable is fitted
to the vendor's per-variable limit and each WeChat value to its field type's limit.
"""
from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "templates" / "templates.toml"

# WeChat value limits by field type (the subscribe-message parameter table).
WECHAT_LIMITS = {"thing": 20, "character_string": 32, "phrase": 5, "name": 10, "number": 32, "letter": 32}
_KEY = re.compile(r"^([a-z_]+?)\d+$")
_SEPARATORS = re.compile(r"[、，,；;\s]+")
# Words that are never a time, place or instruction: a template text that carries one is refused.
_FORBIDDEN = ("诊断", "病情", "癌", "肿瘤", "阳性", "阴性", "{reason}", "{diagnosis}")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class WeChatSpec:
    template_id: str
    data: Mapping[str, str]
    page: str = ""


@dataclass(frozen=True)
class Template:
    key: str
    version: int
    text: str
    params: tuple[str, ...]
    aliyun: str
    tencent: str
    wechat: WeChatSpec
    essential: bool = True
    urgent: bool = False


@dataclass(frozen=True)
class Rendered:
    text: str
    sms_params: dict[str, str]
    wechat_data: dict[str, str]
    wechat_page: str


def _fields(fmt: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(fmt) if name}


@dataclass
class Catalogue:
    templates: dict[str, Template]
    departments: dict[str, str] = field(default_factory=dict)
    modalities: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, text: str) -> "Catalogue":
        raw = tomllib.loads(text)
        templates = {}
        for key, t in raw.get("template", {}).items():
            wechat = t.get("wechat", {})
            tpl = Template(
                key=key, version=int(t["version"]), text=t["text"], params=tuple(t.get("params", ())),
                aliyun=t["aliyun"], tencent=str(t["tencent"]),
                wechat=WeChatSpec(wechat["template_id"], dict(wechat["data"]), wechat.get("page", "")),
                essential=bool(t.get("essential", True)), urgent=bool(t.get("urgent", False)))
            _check(tpl)
            templates[key] = tpl
        return cls(templates, dict(raw.get("departments", {})), dict(raw.get("modalities", {})))

    @classmethod
    def load(cls, path: Path | None = None) -> "Catalogue":
        return cls.from_toml((path or DEFAULT_FILE).read_text(encoding="utf-8"))

    def get(self, key: str) -> Template:
        try:
            return self.templates[key]
        except KeyError:
            raise TemplateError(f"no template {key!r}") from None

    def department(self, code: str) -> str:
        return self.departments.get(code, code if _has_cjk(code) else "专科")

    def modality(self, code: str) -> str:
        return self.modalities.get(code, code or "检查")


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _check(tpl: Template) -> None:
    for word in _FORBIDDEN:
        if word in tpl.text or any(word in v for v in tpl.wechat.data.values()):
            raise TemplateError(f"template {tpl.key} carries {word!r}: messages never state a diagnosis")
    missing = _fields(tpl.text) - set(tpl.params)
    if missing:
        raise TemplateError(f"template {tpl.key}: text uses {sorted(missing)} not in params")
    for key in tpl.wechat.data:
        if not _KEY.match(key):
            raise TemplateError(f"template {tpl.key}: WeChat key {key!r} has no type")


def fit(value: str, limit: int) -> str:
    """Shorten a value to `limit` characters: drop separators first, then cut with an ellipsis."""
    value = " ".join(value.split())
    if limit <= 0 or len(value) <= limit:
        return value
    compact = _SEPARATORS.sub("", value)
    if len(compact) <= limit:
        return compact
    return compact[: limit - 1] + "…"


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise TemplateError(f"no value for {{{key}}}")


def render(tpl: Template, values: Mapping[str, str], *, sms_param_limit: int = 0) -> Rendered:
    vals = _Strict(values)
    text = tpl.text.format_map(vals)
    sms = {name: fit(str(vals[name]), sms_param_limit) for name in tpl.params}
    data = {}
    for key, fmt in tpl.wechat.data.items():
        kind = _KEY.match(key).group(1)
        data[key] = fit(fmt.format_map(vals), WECHAT_LIMITS.get(kind, 0))
    page = tpl.wechat.page.format_map(vals) if tpl.wechat.page else ""
    return Rendered(text=" ".join(text.split()), sms_params=sms, wechat_data=data, wechat_page=page)
