"""What a patient must do before an item, in Chinese, and what to bring."""
from __future__ import annotations

BRING = "身份证、医保卡、转诊单及既往检查结果"


def exam_preparation(modality: str, fasting_hours: int, contrast_agent: bool,
                     kidney_function_valid_days: int, preparation_days: int, note: str = "") -> str:
    parts: list[str] = []
    if fasting_hours > 0:
        parts.append(f"检查前{fasting_hours}小时禁食")
    if contrast_agent:
        days = kidney_function_valid_days or 30
        prefix = "增强" + modality if modality in ("CT", "MRI") else "增强检查"
        parts.append(f"{prefix}需携带近{days}天内肾功能结果")
    if preparation_days > 0:
        parts.append(f"需提前{preparation_days}天按医嘱做检查前准备")
    if note:
        parts.append(note)
    return "；".join(parts)


def consultation_preparation() -> str:
    return "请提前30分钟到门诊服务台凭转诊单报到"


def admission_preparation() -> str:
    return "请携带生活用品，到病区护士站办理入院"
