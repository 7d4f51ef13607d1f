"""No log line written while the notify tests ran carries a full phone number."""
import re

import pytest

MOBILE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")


@pytest.mark.runs_last
def test_no_full_phone_number_in_any_log_line(log_dir):
    hits = []
    for path in sorted(log_dir.glob("*.log")):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MOBILE.search(line):
                hits.append(f"{path.name}:{number}: {line[:200]}")
    # Something was logged about phones, masked: the check is not vacuous.
    assert any("****" in p.read_text(encoding="utf-8", errors="replace") for p in log_dir.glob("*.log"))
    assert not hits, "\n".join(hits[:20])
