"""Settings are checked before a service connects to anything: every bad variable named
at once, secrets never repeated, patient-data keys and notify channels complete."""
import base64
import dataclasses
import os

import pytest
import structlog.testing
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common import app, config
from services.common.pii import PiiCipher
from services.notify.settings import NotifySettings
from services.referral.settings import ReferralSettings
from services.scheduling.settings import SchedulerSettings


def _b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


def _settings(service: str = "notify", **fields) -> config.Settings:
    base, problems = config.read(service)
    assert problems == []
    return dataclasses.replace(base, database_url="postgresql://db/x", nats_url="nats://n:4222", **fields)


# ---------------------------------------------------------------- patient-data keys


def test_an_empty_hash_key_is_refused_with_the_encryption_keys_set():
    with pytest.raises(config.SettingsError) as refused:
        PiiCipher.from_config(f"k1:{_b64(32)}", "")
    assert refused.value.problems == [
        "PII_HASH_KEY must be set: base64 of at least 32 random bytes (DEV_MODE=1 generates local keys)"]


def test_a_garbled_hash_key_is_refused():
    with pytest.raises(config.SettingsError) as refused:
        PiiCipher.from_config(f"k1:{_b64(32)}", "not base64!")
    assert refused.value.problems == ["PII_HASH_KEY is not valid base64"]


def test_a_short_hash_key_is_accepted_with_a_warning_that_never_shows_it():
    # Refusing it would stop the service, and replacing it orphans every stored lookup hash:
    # an existing short key keeps working until a planned rotation.
    short = _b64(16)
    with structlog.testing.capture_logs() as logs:
        cipher = PiiCipher.from_config(f"k1:{_b64(32)}", short)
    assert cipher.lookup_hash("13812345678") == PiiCipher.from_config(
        f"k2:{_b64(32)}", short).lookup_hash("13812345678")
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "plan a rotation" in warnings[0]["event"]
    assert warnings[0]["bytes"] == 16
    assert short not in repr(logs) and short[:8] not in repr(logs)


def test_a_hash_key_of_32_bytes_logs_no_warning():
    with structlog.testing.capture_logs() as logs:
        PiiCipher.from_config(f"k1:{_b64(32)}", _b64(32))
    assert logs == []


def test_a_bad_encryption_key_is_reported_by_position_never_printed():
    key = _b64(32)
    short = _b64(20)
    with pytest.raises(config.SettingsError) as refused:
        # No "kid:" prefix: the old parser took the whole key for the key id and printed it.
        PiiCipher.from_config(f"{key},k2:{short},k3:%%%", _b64(32))
    message = str(refused.value)
    assert key not in message and short not in message and key[:8] not in message
    assert refused.value.problems == [
        "PII_ENCRYPTION_KEYS entry 1 must be kid:base64key (an id of letters, digits, '_', '.' or '-', "
        "a colon, then the key)",
        "PII_ENCRYPTION_KEYS entry 2: a decrypt-only key must be 16, 24 or 32 bytes, it is 20",
        "PII_ENCRYPTION_KEYS entry 3: the key is not valid base64"]


@pytest.mark.parametrize("size", [16, 24])
def test_the_key_that_encrypts_must_be_256_bits(size):
    with pytest.raises(config.SettingsError) as refused:
        PiiCipher.from_config(f"new:{_b64(size)},old:{_b64(32)}", _b64(32))
    assert refused.value.problems == [
        f"PII_ENCRYPTION_KEYS entry 1: the key that encrypts must be 32 bytes (AES-256), it is {size}"]
    with pytest.raises(ValueError, match="key 1 .the one that encrypts. must be 256 bits"):
        PiiCipher({"new": os.urandom(size)}, os.urandom(32))


@pytest.mark.parametrize("size", [16, 24, 32])
def test_data_under_an_older_shorter_key_stays_readable_after_a_rotation(size):
    # Written before the first key had to be 256 bits: sealed here the way encrypt() seals.
    old_key, nonce = os.urandom(size), os.urandom(12)
    sealed = AESGCM(old_key).encrypt(nonce, b"13812345678", b"mobile")
    token = "old:" + base64.b64encode(nonce + sealed).decode()
    rotated = PiiCipher.from_config(f"new:{_b64(32)},old:{base64.b64encode(old_key).decode()}", _b64(32))
    assert rotated.decrypt(token, "mobile") == "13812345678"
    assert rotated.encrypt("x").startswith("new:")


def test_outside_dev_mode_a_start_needs_both_keys(env, tmp_path):
    env.set(PII_ENCRYPTION_KEYS=f"k1:{_b64(32)}", AUTH_JWT_PUBLIC_KEYS="x")
    settings = _settings("referral", dev_mode=False, data_dir=tmp_path)
    with pytest.raises(config.SettingsError) as refused:
        app.prepare(settings)
    assert [p.split(" ")[0] for p in refused.value.problems] == ["AUTH_JWT_PUBLIC_KEYS", "PII_HASH_KEY"]


def test_dev_mode_generates_both_keys_when_neither_is_set(tmp_path):
    cipher = PiiCipher.from_config("", "", tmp_path)
    assert cipher.decrypt(cipher.encrypt("13812345678")) == "13812345678"


# ---------------------------------------------------------------- one report, every variable


def test_every_bad_setting_is_named_in_one_report(env):
    secret = "postgresql://u:hunter2@db/x"
    env.set(GRPC_PORT="six", DB_POOL_MAX="many", DEV_MODE="maybe", SHUTDOWN_GRACE_SECONDS="-1",
            MIGRATE_ON_START="perhaps", GRPC_MAX_CONNECTION_AGE_SECONDS="soon", DATABASE_URL=secret)
    _, problems = config.read("referral")
    assert [p.split(" ")[0] for p in problems] == [
        "GRPC_PORT", "SHUTDOWN_GRACE_SECONDS", "DB_POOL_MAX", "DEV_MODE", "MIGRATE_ON_START",
        "GRPC_MAX_CONNECTION_AGE_SECONDS"]
    assert "GRPC_PORT must be an integer, got 'six'" in problems
    report = config.SettingsError(problems).report("referral")
    assert report.startswith("referral: not started, 6 setting(s) to fix:\n  - GRPC_PORT")
    assert "hunter2" not in report


def test_a_secret_is_named_but_its_value_is_hidden():
    r = config.Reader({"TENCENT_SECRET_KEY": "s3cr3t", "NOTIFY_SMS_PER_DAY": "lots"}.get)
    r.integer("TENCENT_SECRET_KEY", 1)
    r.integer("NOTIFY_SMS_PER_DAY", 8)
    assert r.problems == ["TENCENT_SECRET_KEY must be an integer (value hidden)",
                          "NOTIFY_SMS_PER_DAY must be an integer, got 'lots'"]


@pytest.mark.parametrize("parse, env_values, named", [
    (SchedulerSettings.from_settings, {"SCHEDULER_TIME_LIMIT_SECONDS": "fast", "SCHEDULER_WORKERS": "2.5"},
     ["SCHEDULER_TIME_LIMIT_SECONDS", "SCHEDULER_WORKERS"]),
    (ReferralSettings.from_settings, {"REFERRAL_SLA_CHECK_SECONDS": "hourly", "REFERRAL_WATCH_POLL_SECONDS": "0"},
     ["REFERRAL_WATCH_POLL_SECONDS", "REFERRAL_SLA_CHECK_SECONDS"]),
    # "18" once ended in "not enough values to unpack", naming nothing.
    (NotifySettings.from_settings, {"NOTIFY_REMINDER_DAY_BEFORE_AT": "18", "NOTIFY_LEASE_SECONDS": "a minute",
                                    "QUIET_HOURS": "nights"},
     ["NOTIFY_LEASE_SECONDS", "QUIET_HOURS", "NOTIFY_REMINDER_DAY_BEFORE_AT"]),
])
def test_a_service_names_its_own_bad_settings(env, parse, env_values, named):
    env.set(**env_values)
    with pytest.raises(config.SettingsError) as refused:
        parse(_settings(dev_mode=True))
    assert [p.split(" ")[0] for p in refused.value.problems] == named


def test_the_service_settings_are_checked_with_the_shared_ones(env, tmp_path):
    env.set(SCHEDULER_WORKERS="two")
    with pytest.raises(config.SettingsError) as refused:
        app.prepare(_settings("scheduling", dev_mode=True, data_dir=tmp_path),
                    SchedulerSettings.from_settings, earlier=["GRPC_PORT must be an integer, got 'x'"])
    assert refused.value.problems == ["GRPC_PORT must be an integer, got 'x'",
                                      "SCHEDULER_WORKERS must be an integer, got 'two'"]


# ---------------------------------------------------------------- notify channels

ALIYUN = {"SMS_VENDOR": "aliyun", "ALIYUN_ACCESS_KEY_ID": "LTAI-id", "ALIYUN_ACCESS_KEY_SECRET": "ak-secret",
          "ALIYUN_SMS_SIGN_NAME": "县医共体"}


def _notify(dev_mode: bool = False) -> NotifySettings:
    return NotifySettings.from_settings(_settings(dev_mode=dev_mode))


def _problems(dev_mode: bool = False) -> list[str]:
    with pytest.raises(config.SettingsError) as refused:
        _notify(dev_mode)
    return refused.value.problems


def test_outside_dev_mode_notify_needs_a_complete_channel(env):
    assert [p.split(" ")[0] for p in _problems()] == ["WECHAT_APPID"]
    assert _notify(dev_mode=True).describe() == {"wechat": None, "sms": None}


def test_a_half_configured_channel_is_refused(env):
    env.set(ALIYUN_ACCESS_KEY_ID="LTAI-id", WECHAT_APPID="wx123")
    assert _problems() == ["WECHAT_APPSECRET must be set: WECHAT_APPID is, and WeChat needs both",
                           "ALIYUN_ACCESS_KEY_SECRET must be set for SMS_VENDOR=aliyun",
                           "ALIYUN_SMS_SIGN_NAME must be set for SMS_VENDOR=aliyun",
                           "WECHAT_APPID or the SMS vendor's settings must be set: with no complete channel "
                           "(WECHAT_APPID and WECHAT_APPSECRET, or every setting of SMS_VENDOR) no patient is told"]


def test_a_chosen_sms_vendor_needs_every_field_even_with_wechat_complete(env):
    env.set(SMS_VENDOR="tencent", WECHAT_APPID="wx123", WECHAT_APPSECRET="wx-secret", TENCENT_SMS_SIGN_NAME="")
    assert [p.split(" ")[0] for p in _problems()] == [
        "TENCENT_SECRET_ID", "TENCENT_SECRET_KEY", "TENCENT_SMS_SDK_APP_ID", "TENCENT_SMS_SIGN_NAME"]


@pytest.mark.parametrize("endpoint", ["dysmsapi.aliyuncs.com", "http://dysmsapi.aliyuncs.com", "https://"])
def test_a_vendor_endpoint_must_be_an_https_url_with_a_host(env, endpoint):
    env.set(**ALIYUN, ALIYUN_SMS_ENDPOINT=endpoint, TENCENT_SMS_ENDPOINT="sms.tencentcloudapi.com")
    assert _problems() == [f"ALIYUN_SMS_ENDPOINT must be https://<host>[...], got {endpoint!r}",
                           "TENCENT_SMS_ENDPOINT must be https://<host>[...], got 'sms.tencentcloudapi.com'"]


def test_dev_mode_allows_a_plain_http_sandbox_but_not_a_missing_scheme(env):
    env.set(**ALIYUN, ALIYUN_SMS_ENDPOINT="http://127.0.0.1:8081")
    assert _notify(dev_mode=True).sms["endpoint"] == "http://127.0.0.1:8081"
    env.set(ALIYUN_SMS_ENDPOINT="127.0.0.1:8081")
    assert [p.split(" ")[0] for p in _problems(dev_mode=True)] == ["ALIYUN_SMS_ENDPOINT"]


def test_a_complete_channel_is_described_without_its_secrets(env):
    env.set(**ALIYUN)
    ns = _notify()
    assert ns.describe() == {"wechat": None, "sms": {"vendor": "aliyun", "api": "dysmsapi.aliyuncs.com"}}
    assert ns.sms == {"endpoint": "https://dysmsapi.aliyuncs.com", "access_key_id": "LTAI-id",
                      "access_key_secret": "ak-secret", "sign_name": "县医共体", "region_id": "cn-hangzhou"}


# ---------------------------------------------------------------- gRPC connection age


def test_connection_age_options_only_when_set():
    assert app.grpc_options(_settings(), reuse_port=False) == [
        ("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 << 20)]
    aged = _settings(grpc_max_connection_age_seconds=300, grpc_max_connection_age_grace_seconds=15)
    assert app.grpc_options(aged, reuse_port=True)[2:] == [
        ("grpc.max_connection_age_ms", 300_000), ("grpc.max_connection_age_grace_ms", 15_000)]
