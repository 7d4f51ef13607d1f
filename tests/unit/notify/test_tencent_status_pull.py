"""Reading Tencent's pulled statuses: our message is the one carrying our SessionContext."""
from __future__ import annotations

from services.notify.adapters.channels import SendReport
from services.notify.adapters.channels.tencent_sms import report_in


def status(context: str | None, *, serial: str = "2019:100", ok: bool = True) -> dict:
    return {"UserReceiveTime": 1700000000, "CountryCode": "86", "SubscriberNumber": "13800000012",
            "PhoneNumber": "+8613800000012", "SerialNo": serial, "ReportStatus": "SUCCESS" if ok else "FAIL",
            "Description": "DELIVRD" if ok else "UNDELIV", "SessionContext": context}


def test_our_message_is_found_by_its_session_context_among_the_numbers_others():
    statuses = [status("other-delivery", serial="2019:1"), status("ours", serial="2019:2", ok=False), status(None)]
    assert report_in(statuses, "ours") == SendReport(vendor_message_id="2019:2", delivered=False, code="UNDELIV")


def test_nothing_is_found_without_our_session_context():
    # Tencent leaves SessionContext empty (or null) in pulled statuses until its SMS support enables it.
    assert report_in([status(""), status(None)], "ours") is None
    assert report_in([], "ours") is None


def test_a_message_reported_twice_counts_as_delivered_if_either_report_says_so():
    statuses = [status("ours", ok=False), status("ours", ok=True)]
    assert report_in(statuses, "ours").delivered is True


def test_an_entry_without_a_serial_number_or_not_an_object_is_no_report():
    assert report_in([status("ours", serial=""), "ours", None], "ours") is None
