"""Versioned Chinese templates per event and channel, loaded from data, rendered purely.

A template's variables are filled from values the event handlers computed (times,
places, instructions); nothing else can reach a patient. Each SMS variable is fitted
to the vendor's per-variable limit and each WeChat value to its field type's limit.
A time or a place may be shortened; an instruction (what to bring, how to prepare) may
not be lost: one that does not fit keeps what fits and points to the instructions message
("就诊须知"), which carries it whole, a piece in each of its variables.
"""
from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "templates" / "templates.toml"

# WeChat value limits by field type (the subscribe-message parameter table).
WECHAT_LIMITS = {"thing": 20, "character_string": 32, "phrase": 5, "name": 10, "number": 32, "letter": 32}
_KEY = re.compile(r"^([a-z_]+?)\d+$")
_SEPARATORS = re.compile(r"[、，,；;\s]+")
# Ends an instruction cut to fit: the patient finds it whole in the instructions message.
POINTER = "…见须知"
# The template of that message.
INSTRUCTIONS = "instructions"
# Words that are never a time, place or instruction: a template text that carries one is refused.
_FORBIDDEN = ("诊断", "病情", "癌", "肿瘤", "阳性", "阴性", "{reason}", "{diagnosis}")
# A department whose name says what the patient may have (cancer, a mental illness, HIV or
# another infection, infertility, addiction) would tell it to whoever reads the phone: such
# a department is "专科" in patient texts, and the place (building, floor, room) says where.
_TELLING_DEPARTMENT = ("癌", "肿瘤", "精神", "心理", "性病", "艾滋", "传染", "感染", "戒毒", "生殖", "不孕")
ANY_DEPARTMENT = "专科"


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
    # The params that are instructions, each with how it reads in the instructions message.
    instructions: Mapping[str, str] = field(default_factory=dict)

    @property
    def wechat_limit(self) -> int:
        """The tightest limit of its WeChat values (0: none)."""
        limits = (WECHAT_LIMITS.get(_KEY.match(key).group(1), 0) for key in self.wechat.data)
        return min((limit for limit in limits if limit > 0), default=0)

    def instruction_lines(self, values: Mapping[str, str], names: Collection[str]) -> list[str]:
        """The instructions `names` whole, as the instructions message words them."""
        vals = _Strict(values)
        return [" ".join(fmt.format_map(vals).split()) for name, fmt in self.instructions.items() if name in names]


@dataclass(frozen=True)
class Rendered:
    text: str
    sms_params: dict[str, str]
    wechat_data: dict[str, str]
    wechat_page: str
    # The instructions cut to fit (and pointing to the instructions message), by channel.
    sms_cut: frozenset[str] = frozenset()
    wechat_cut: frozenset[str] = frozenset()


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
            try:
                wechat = t.get("wechat", {})
                tpl = Template(
                    key=key, version=int(t["version"]), text=t["text"], params=tuple(t.get("params", ())),
                    aliyun=t["aliyun"], tencent=str(t["tencent"]),
                    wechat=WeChatSpec(wechat["template_id"], dict(wechat["data"]), wechat.get("page", "")),
                    essential=bool(t.get("essential", True)), urgent=bool(t.get("urgent", False)),
                    instructions=dict(t.get("instructions", {})))
            except KeyError as exc:
                # A TemplateError, so that the settings check reports it with the other problems.
                field_name = exc.args[0]
                where = f"wechat.{field_name}" if field_name in ("template_id", "data") else field_name
                raise TemplateError(f"template {key} has no {where!r}") from None
            except (TypeError, AttributeError, ValueError) as exc:
                raise TemplateError(f"template {key} is malformed: {exc}") from None
            _check(tpl)
            templates[key] = tpl
        departments = {str(k): str(v) for k, v in raw.get("departments", {}).items()}
        telling = sorted(f"{k} = {v!r}" for k, v in departments.items() if _tells_condition(v))
        if telling:
            raise TemplateError(f"departments {', '.join(telling)}: a name patients read may not hint at a "
                                f"condition (leave it out: it reads {ANY_DEPARTMENT!r})")
        return cls(templates, departments, dict(raw.get("modalities", {})))

    @classmethod
    def load(cls, path: Path | None = None) -> "Catalogue":
        return cls.from_toml((path or DEFAULT_FILE).read_text(encoding="utf-8"))

    def require(self, keys: Collection[str]) -> None:
        """Refuses a catalogue that lacks one of `keys`: a message naming it could never go out."""
        missing = sorted(set(keys) - self.templates.keys())
        if missing:
            raise TemplateError(f"has no template {', '.join(missing)}: the messages that use them could "
                                "never be sent")

    def get(self, key: str) -> Template:
        try:
            return self.templates[key]
        except KeyError:
            raise TemplateError(f"no template {key!r}") from None

    def department(self, code: str) -> str:
        """As patients read it: the catalogue's name, else the code if it is already Chinese
        (a referral may carry the name itself), never one that hints at a condition."""
        name = self.departments.get(code, code if _has_cjk(code) else ANY_DEPARTMENT)
        return ANY_DEPARTMENT if _tells_condition(name) else name

    def modality(self, code: str) -> str:
        return self.modalities.get(code, code or "检查")


def _tells_condition(department: str) -> bool:
    return any(word in department for word in _TELLING_DEPARTMENT)


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
    # An instruction is worded from its message's own params: what rendered the message words it.
    unknown = set(tpl.instructions).union(*map(_fields, tpl.instructions.values())) - set(tpl.params)
    if unknown:
        raise TemplateError(f"template {tpl.key}: instructions use {sorted(unknown)} not in params")


def fit(value: str, limit: int, tail: str = "…") -> str:
    """Shorten a value to `limit` characters: drop separators first, then cut and end with `tail`."""
    value = " ".join(value.split())
    if limit <= 0 or len(value) <= limit:
        return value
    compact = _SEPARATORS.sub("", value)
    if len(compact) <= limit:
        return compact
    tail = tail if len(tail) < limit else "…"
    return compact[: limit - len(tail)] + tail


def fits(value: str, limit: int) -> bool:
    """Whether `fit` keeps every word of `value` (it may drop separators)."""
    return limit <= 0 or len(_SEPARATORS.sub("", value)) <= limit


def _fitted(value: str, limit: int, *, instruction: bool) -> tuple[str, bool]:
    """(the value fitted, whether it is an instruction cut): one points to the instructions message."""
    if instruction and not fits(value, limit):
        return fit(value, limit, POINTER), True
    return fit(value, limit), False


def spread(tpl: Template, text: str, size: int) -> list[dict[str, str]]:
    """The values of as few `tpl` messages as carry `text` whole: each of its params but `index`
    takes a piece of at most `size` characters (0: no limit), none empty (WeChat refuses an empty
    value); `index` numbers the messages ("1/2")."""
    slots = [p for p in tpl.params if p != "index"]
    text = " ".join(text.split())
    per_message = size * len(slots) if size > 0 else max(len(text), 1)
    chunks = _even(text, max(1, -(-len(text) // per_message)))
    return [{"index": f"{i}/{len(chunks)}",
             **{slot: piece or "。" for slot, piece in zip(slots, _even(chunk, len(slots)))}}
            for i, chunk in enumerate(chunks, 1)]


def _even(text: str, n: int) -> list[str]:
    """`text` in `n` consecutive parts whose lengths differ by one at most."""
    size, extra = divmod(len(text), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise TemplateError(f"no value for {{{key}}}")


def render(tpl: Template, values: Mapping[str, str], *, sms_param_limit: int = 0) -> Rendered:
    vals = _Strict(values)
    text = tpl.text.format_map(vals)
    sms, sms_cut = {}, set()
    for name in tpl.params:
        sms[name], cut = _fitted(str(vals[name]), sms_param_limit, instruction=name in tpl.instructions)
        if cut:
            sms_cut.add(name)
    data, wechat_cut = {}, set()
    for key, fmt in tpl.wechat.data.items():
        kind = _KEY.match(key).group(1)
        instructions = _fields(fmt) & tpl.instructions.keys()
        data[key], cut = _fitted(fmt.format_map(vals), WECHAT_LIMITS.get(kind, 0), instruction=bool(instructions))
        if cut:
            wechat_cut |= instructions
    page = tpl.wechat.page.format_map(vals) if tpl.wechat.page else ""
    return Rendered(text=" ".join(text.split()), sms_params=sms, wechat_data=data, wechat_page=page,
                    sms_cut=frozenset(sms_cut), wechat_cut=frozenset(wechat_cut))
