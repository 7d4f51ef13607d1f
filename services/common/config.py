"""Configuration from environment variables only.

Every setting has a default that works on one machine, so `make run` needs no
configuration; a cluster sets the variables (see deploy/k8s). Values are read once
at start into an immutable object that is passed down, never read ad hoc.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

DEFAULT_GRPC_PORTS = {"referral": 50051, "scheduling": 50052, "notify": 50053}
DEFAULT_METRICS_PORTS = {"referral": 9091, "scheduling": 9092, "notify": 9093}


def _env(name: str, default: str = "") -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _env_float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    service: str
    database_url: str
    nats_url: str
    grpc_port: int
    metrics_port: int
    log_level: str
    data_dir: Path
    shutdown_grace_seconds: float
    nats_stream_replicas: int
    outbox_retention_hours: float
    outbox_poll_seconds: float
    consumer_max_deliver: int
    # How often the inbox is purged; how long it keeps a row is derived, not set
    # (services.common.consumer.inbox_retention).
    inbox_purge_seconds: float
    db_pool_min: int
    db_pool_max: int
    db_command_timeout: float
    db_acquire_timeout: float
    auth_issuer: str
    auth_audience: str
    auth_public_keys: str
    pii_encryption_keys: str
    pii_hash_key: str
    # One-machine development: missing keys are generated under data_dir instead of
    # refusing to start. Never set in a cluster.
    dev_mode: bool = False
    # TLS for the gRPC port; with a client CA, clients must present a certificate (mTLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def schema(self) -> str:
        return self.service

    @property
    def outbox_retention(self) -> timedelta:
        return timedelta(hours=self.outbox_retention_hours)

    def get(self, name: str, default: str = "") -> str:
        """Service-specific settings (e.g. SMS_VENDOR) still come from the environment."""
        return _env(name, default)


def load(service: str) -> Settings:
    if service not in DEFAULT_GRPC_PORTS:
        raise ValueError(f"unknown service {service!r}")
    return Settings(
        service=service,
        database_url=_env("DATABASE_URL"),
        nats_url=_env("NATS_URL"),
        grpc_port=_env_int("GRPC_PORT", DEFAULT_GRPC_PORTS[service]),
        metrics_port=_env_int("METRICS_PORT", DEFAULT_METRICS_PORTS[service]),
        log_level=_env("LOG_LEVEL", "INFO").upper(),
        data_dir=Path(_env("DATA_DIR", str(repo_root() / ".data"))),
        shutdown_grace_seconds=_env_float("SHUTDOWN_GRACE_SECONDS", 20.0),
        nats_stream_replicas=_env_int("NATS_STREAM_REPLICAS", 1),
        outbox_retention_hours=_env_float("OUTBOX_RETENTION_HOURS", 168.0),
        outbox_poll_seconds=_env_float("OUTBOX_POLL_SECONDS", 1.0),
        consumer_max_deliver=_env_int("CONSUMER_MAX_DELIVER", 5),
        inbox_purge_seconds=_env_float("INBOX_PURGE_SECONDS", 3600.0),
        db_pool_min=_env_int("DB_POOL_MIN", 2),
        db_pool_max=_env_int("DB_POOL_MAX", 10),
        db_command_timeout=_env_float("DB_COMMAND_TIMEOUT", 10.0),
        db_acquire_timeout=_env_float("DB_ACQUIRE_TIMEOUT", 5.0),
        auth_issuer=_env("AUTH_JWT_ISSUER", "consortium-dev"),
        auth_audience=_env("AUTH_JWT_AUDIENCE", "consortium-api"),
        auth_public_keys=_env("AUTH_JWT_PUBLIC_KEYS"),
        pii_encryption_keys=_env("PII_ENCRYPTION_KEYS"),
        pii_hash_key=_env("PII_HASH_KEY"),
        dev_mode=_env("DEV_MODE", "0") in ("1", "true", "yes"),
        tls_cert_file=_env("TLS_CERT_FILE"),
        tls_key_file=_env("TLS_KEY_FILE"),
        tls_client_ca_file=_env("TLS_CLIENT_CA_FILE"),
    )
