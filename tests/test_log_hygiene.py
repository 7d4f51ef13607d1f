"""No log line of the whole test run may carry a full mobile or ID number."""
import pytest

from services.common.logging import mask_pii
from tests.support.pii import ID_NUMBER, MOBILE, has_pii


def test_mask_pii_masks_mobile_and_id_number():
    line = '{"event": "patient 13812345678 id 11010519491231002X called 13912345678"}'
    masked = mask_pii(line)
    assert "138****5678" in masked and "139****5678" in masked
    assert "110***********002X" in masked
    assert not MOBILE.search(masked) and not ID_NUMBER.search(masked)


def test_mask_pii_leaves_other_numbers():
    assert mask_pii("seq 123456 port 50051 ts 1700000000123") == "seq 123456 port 50051 ts 1700000000123"


@pytest.mark.runs_last
def test_no_unmasked_pii_in_any_log(log_dir):
    hits = []
    files = sorted(log_dir.glob("*.log"))
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if has_pii(line):
                hits.append(f"{path.name}:{number}: {line[:200]}")
    lines = sum(1 for p in files for _ in p.open(encoding="utf-8", errors="replace"))
    print(f"PII scan: {len(files)} log files, {lines} lines, unmasked hits = {len(hits)}")
    assert not hits, "\n".join(hits[:20])
