"""`make run` starts only the local servers whose URL is not given."""
import pytest

from services import launcher
from services.common.localstack import LocalNats, LocalStack


class _Started(Exception):
    pass


@pytest.mark.parametrize("given, wanted", [
    ({"DATABASE_URL": "postgresql://db.example/x"}, {"postgres": False, "nats": True}),
    ({"NATS_URL": "nats://nats.example:4222"}, {"postgres": True, "nats": False}),
    ({}, {"postgres": True, "nats": True}),
])
async def test_only_the_missing_server_is_started(tmp_path, monkeypatch, given, wanted):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("NATS_URL", raising=False)
    asked = []

    def start(data_dir, **which):
        asked.append(which)
        raise _Started  # nothing is really started

    monkeypatch.setattr(LocalStack, "start", staticmethod(start))
    with pytest.raises(_Started):
        await launcher.Launcher(tmp_path, env_overrides=given).start()
    assert asked == [wanted]


def test_a_stack_of_one_server_gives_only_its_url(tmp_path):
    assert LocalStack(None, LocalNats(tmp_path, port=4333)).env() == {"NATS_URL": "nats://127.0.0.1:4333"}
