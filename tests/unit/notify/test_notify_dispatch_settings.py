"""The dispatcher's lease must outlast a whole send and its record."""
from __future__ import annotations

from datetime import timedelta

import pytest

from services.notify.service_layer.dispatch import DispatchSettings


def test_a_lease_shorter_than_a_send_and_its_record_is_refused():
    DispatchSettings(lease=timedelta(seconds=60), send_timeout=timedelta(seconds=30))
    with pytest.raises(ValueError, match="lease"):
        DispatchSettings(lease=timedelta(seconds=60), send_timeout=timedelta(seconds=55))
