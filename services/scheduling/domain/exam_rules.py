"""Exam preparation rules and contraindications, decided before the engine runs.

The rule (pure, no I/O):

* A channel's *required results* are its ``required_results`` plus KIDNEY_FUNCTION when it
  uses a contrast agent (contrast CT/MRI need a recent creatinine/eGFR). The requirements
  of a modality are the union over the hospital's channels of that modality (the engine
  may pick any of them).
* A requirement is *met* when the referral carries a recognised prior result of that kind:
  a need that is ``covered_by_prior_result`` and whose exam modality names the result
  (KIDNEY_FUNCTION, CREATININE, EGFR, 肾功能, ...; COAGULATION, PT, INR, 凝血功能, ...).
  The sending clinic's mutual-recognition check (结果互认) already decided it is valid.
* An unmet requirement does not stop the booking: the exam gets at least one preparation
  day (the test is a walk-in lab draw, at the clinic or the hospital lab, with no
  appointment) — none for an EMERGENCY referral, whose labs are done on the spot — and
  the booked item carries a Chinese instruction saying which result to bring. If the
  engine then cannot place the referral, the waitlist reason is PREPARATION_UNMET.
* A *contraindication* is a channel's ``contraindications`` label (pacemaker, pregnancy,
  contrast allergy, in Chinese or English) that matches a condition of the patient. The
  snapshot carries no condition list (the referral team owns that message), so today the
  conditions come from the ICD-10 main diagnosis only (Z95.0 pacemaker, O*/Z33/Z34
  pregnancy, Z88.8/Z91.041 contrast allergy). An uncovered exam need whose modality has a
  matching contraindication on any channel (union: the engine may pick any) is not booked:
  the referral is waitlisted as CONTRAINDICATED with a Chinese explanation, for the
  referring doctor to choose another exam.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PREPARATION_UNMET = "PREPARATION_UNMET"
CONTRAINDICATED = "CONTRAINDICATED"

KIDNEY_FUNCTION = "KIDNEY_FUNCTION"
COAGULATION = "COAGULATION"

_RESULT_ALIASES = {
    KIDNEY_FUNCTION: ("KIDNEY_FUNCTION", "RENAL_FUNCTION", "CREATININE", "EGFR", "SCR", "肾功能", "肌酐"),
    COAGULATION: ("COAGULATION", "COAG", "PT", "INR", "PT_INR", "APTT", "凝血功能", "凝血"),
}
RESULT_TEXT = {KIDNEY_FUNCTION: "肾功能（肌酐/eGFR）", COAGULATION: "凝血功能"}

PACEMAKER, PREGNANCY, CONTRAST_ALLERGY = "PACEMAKER", "PREGNANCY", "CONTRAST_ALLERGY"
_CONDITION_ALIASES = {
    PACEMAKER: ("PACEMAKER", "CARDIAC_PACEMAKER", "心脏起搏器", "起搏器", "体内起搏器"),
    PREGNANCY: ("PREGNANCY", "PREGNANT", "妊娠", "怀孕", "孕妇"),
    CONTRAST_ALLERGY: ("CONTRAST_ALLERGY", "IODINE_ALLERGY", "碘造影剂过敏", "造影剂过敏", "碘过敏"),
}
CONDITION_TEXT = {PACEMAKER: "体内植入心脏起搏器", PREGNANCY: "妊娠", CONTRAST_ALLERGY: "碘造影剂过敏"}
# The usual modalities as clinics read them; another keeps its code.
MODALITY_TEXT = {"CT": "CT", "MRI": "磁共振（MRI）", "US": "超声", "ENDOSCOPY": "胃肠镜", "DR": "DR"}


def modality_text(modality: str) -> str:
    return MODALITY_TEXT.get(modality.upper(), modality)


def _normalise(text: str) -> str:
    return text.strip().upper().replace("-", "_").replace(" ", "_").replace("/", "_")


def _lookup(aliases: dict[str, tuple[str, ...]], text: str) -> str | None:
    key = _normalise(text)
    for code, names in aliases.items():
        if key in names:
            return code
    return None


def result_code(text: str) -> str | None:
    """The result kind a lab need's modality (or a channel's required result) names."""
    return _lookup(_RESULT_ALIASES, text) or (_normalise(text) or None)


def condition_code(label: str) -> str | None:
    return _lookup(_CONDITION_ALIASES, label)


def conditions_of_diagnosis(icd10: str) -> frozenset[str]:
    code = icd10.strip().upper().replace(".", "")
    out = set()
    if code.startswith(("Z950", "Z450")):
        out.add(PACEMAKER)
    if code.startswith(("O", "Z33", "Z34")):
        out.add(PREGNANCY)
    if code.startswith(("Z888", "Z91041")):
        out.add(CONTRAST_ALLERGY)
    return frozenset(out)


@dataclass(frozen=True)
class ModalityRules:
    """What the hospital's channels of one modality ask for."""
    required_results: frozenset[str] = frozenset()
    # condition code -> the channel's own label (for the explanation)
    contraindications: dict[str, str] = field(default_factory=dict)


def modality_rules(channels: list[tuple[str, bool, list[str], list[str]]]) -> dict[str, ModalityRules]:
    """(modality, contrast_agent, required_results, contraindications) per channel."""
    required: dict[str, set[str]] = {}
    contra: dict[str, dict[str, str]] = {}
    for modality, contrast, results, labels in channels:
        req = required.setdefault(modality, set())
        if contrast:
            req.add(KIDNEY_FUNCTION)
        req.update(c for r in results if (c := result_code(r)))
        for label in labels:
            if (code := condition_code(label)) is not None:
                contra.setdefault(modality, {}).setdefault(code, label)
    return {m: ModalityRules(frozenset(required[m]), contra.get(m, {})) for m in required}


@dataclass(frozen=True)
class Verdict:
    # need id -> result kinds still missing (booked with a preparation day and instruction)
    unmet: dict[str, frozenset[str]] = field(default_factory=dict)
    # (need id, modality, condition code, channel label)
    contraindicated: tuple[tuple[str, str, str, str], ...] = ()

    def instruction(self, need_id: str) -> str:
        missing = self.unmet.get(need_id)
        if not missing:
            return ""
        names = "、".join(RESULT_TEXT.get(m, m) for m in sorted(missing))
        return f"未收到有效的{names}检验结果：请在检查前到基层医疗机构或本院检验科完成{names}检验并携带结果"

    def contraindication_text(self) -> str:
        parts = [f"{modality_text(m)}检查（患者{CONDITION_TEXT.get(c, label)}，为该检查禁忌）"
                 for _, m, c, label in self.contraindicated]
        return "以下检查存在禁忌，未予预约：" + "；".join(parts) + "。请转诊医生更换检查方式后重新提交"

    def unmet_text(self, deadline: str) -> str:
        missing = sorted({m for ms in self.unmet.values() for m in ms})
        names = "、".join(RESULT_TEXT.get(m, m) for m in missing)
        return f"检查前需先完成{names}检验，截止日（{deadline}）前在患者可就诊的日期内无法安排检验后的检查号源"


def check(exam_needs: list[tuple[str, str, bool]], prior_results: set[str], conditions: frozenset[str],
          rules: dict[str, ModalityRules]) -> Verdict:
    """exam_needs: (need id, modality, covered by a prior result); prior_results: result
    kinds the referral carries as recognised prior results."""
    unmet: dict[str, frozenset[str]] = {}
    contraindicated = []
    for need_id, modality, covered in exam_needs:
        r = rules.get(modality)
        if covered or r is None:
            continue
        for code in sorted(conditions & set(r.contraindications)):
            contraindicated.append((need_id, modality, code, r.contraindications[code]))
        missing = r.required_results - prior_results
        if missing:
            unmet[need_id] = frozenset(missing)
    return Verdict(unmet, tuple(contraindicated))
