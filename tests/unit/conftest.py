"""Fixtures for unit tests that read settings from the environment."""
import os

import pytest

# The prefixes of every setting the services read (docs/CONFIGURATION.md): a test starts
# from none of them set, whatever the shell running it exports.
_SETTING_PREFIXES = ("PII", "AUTH", "GRPC", "DB", "DEV", "NOTIFY", "SMS", "WECHAT", "ALIYUN", "TENCENT", "REFERRAL",
                     "SCHEDULER", "SCHEDULING", "QUIET", "RECEIPTS", "SHUTDOWN", "EVENT", "MIGRATE", "DATABASE",
                     "NATS", "TLS")


@pytest.fixture
def env(monkeypatch):
    """A clean environment for the settings read here; set(...) adds to it."""
    for name in list(os.environ):
        if name.split("_")[0] in _SETTING_PREFIXES:
            monkeypatch.delenv(name)

    class Env:
        def set(self, **values: str) -> None:
            for name, value in values.items():
                monkeypatch.setenv(name, value)
    return Env()
