"""Configuration from environment variables only.

Every setting has a default that works on one machine, so `make run` needs no
configuration; a cluster sets the variables (see deploy/k8s). Values are read once
at start into an immutable object that is passed down, never read ad hoc.

Every variable, the shared runtime's and a service's own, is read through a `Reader`:
it collects what is wrong instead of stopping at the first problem, so a start refused
for bad settings names every bad variable at once (`SettingsError`), before the
service connects to anything, and never prints the value of a secret.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

DEFAULT_GRPC_PORTS = {"referral": 50051, "scheduling": 50052, "notify": 50053}
DEFAULT_METRICS_PORTS = {"referral": 9091, "scheduling": 9092, "notify": 9093}
EVENT_LOOPS = ("uvloop", "asyncio")

T = TypeVar("T")

# A variable whose name says it holds a credential, or a URL that may carry one
# (postgresql://user:password@...): its value is never repeated in a message.
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|_URL$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_CLOCK_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


class SettingsError(ValueError):
    """Settings a service cannot start with: one line per problem, each naming its variable."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def report(self, service: str) -> str:
        """The message a refused start prints (no traceback: nothing here is a bug)."""
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"{service}: not started, {len(self.problems)} setting(s) to fix:\n{lines}"


class Reader:
    """Reads settings by name, falling back to the default for a bad value and noting
    the problem; `check()` raises them all together."""

    def __init__(self, lookup: Callable[[str], str | None] = os.environ.get) -> None:
        self._lookup = lookup
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        """The value as set; None when unset or empty (an empty variable means its default)."""
        value = self._lookup(name)
        return None if value is None or value.strip() == "" else value.strip()

    def problem(self, name: str, must: str, value: str | None = None) -> None:
        """Note `<name> <must>`, with the value as given unless the variable holds a secret."""
        if value is None:
            shown = ""
        elif is_secret(name):
            shown = " (value hidden)"
        else:
            shown = f", got {value!r}"
        self.problems.append(f"{name} {must}{shown}")

    def text(self, name: str, default: str = "") -> str:
        value = self.raw(name)
        return default if value is None else value

    def _bounded(self, name: str, default: T, convert: Callable[[str], T], what: str,
                 minimum: T | None, maximum: T | None) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = convert(value)
        except ValueError:
            self.problem(name, f"must be {what}", value)
            return default
        if number != number or number in (float("inf"), float("-inf")):  # nan, inf
            self.problem(name, f"must be {what}", value)
            return default
        if minimum is not None and number < minimum:
            self.problem(name, f"must be at least {minimum}", value)
            return default
        if maximum is not None and number > maximum:
            self.problem(name, f"must be at most {maximum}", value)
            return default
        return number

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        return self._bounded(name, default, int, "an integer", minimum, maximum)

    def number(self, name: str, default: float, *, minimum: float | None = None,
               maximum: float | None = None) -> float:
        return self._bounded(name, default, float, "a number", minimum, maximum)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problem(name, "must be true or false (1/0, yes/no)", value)
        return default

    def choice(self, name: str, default: str, options: Iterable[str]) -> str:
        options = tuple(options)
        value = self.text(name, default).lower()
        if value not in options:
            self.problem(name, f"must be one of {', '.join(options)}", value)
            return default
        return value

    def clock_time(self, name: str, default: str) -> tuple[int, int]:
        """A local time of day, "HH:MM"."""
        value = self.text(name, default)
        match = _CLOCK_TIME.match(value)
        if match is None:
            self.problem(name, "must be a time of day as HH:MM, e.g. 18:00", value)
            match = _CLOCK_TIME.match(default)
            assert match is not None
        return int(match[1]), int(match[2])

    def url(self, name: str, default: str, *, plain_http: bool = False) -> str:
        """An https URL with a host (http too with `plain_http`: a development sandbox)."""
        value = self.text(name, default)
        schemes = ("https", "http") if plain_http else ("https",)
        try:
            parts = urlsplit(value)
            ok = parts.scheme in schemes and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            self.problem(name, f"must be {' or '.join(schemes)}://<host>[...]", value)
        return value

    def parsed(self, name: str, default: str, parse: Callable[[str], T]) -> T | None:
        """A value a domain parser understands; its ValueError becomes the problem noted
        (never for a secret: a parser's message may quote the value)."""
        value = self.text(name, default)
        try:
            return parse(value)
        except ValueError as exc:
            if is_secret(name):
                self.problem(name, "is not valid")
            else:
                message = str(exc)
                self.problems.append(message if message.startswith(name) else f"{name} is not valid: {message}")
            return None

    def check(self) -> None:
        if self.problems:
            raise SettingsError(self.problems)


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
    # The whole shutdown, from SIGTERM to exit: in-flight calls, consumers and the
    # dispatcher get most of it, closing the connections the rest. Kubernetes'
    # terminationGracePeriodSeconds must exceed it plus the preStop sleep.
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
    event_loop: str = "uvloop"
    # Processes serving one port (services.common.app.supervise).
    workers: int = 1
    # False: the schema must already be at the latest migration (a separate migrate step ran).
    migrate_on_start: bool = True
    # gRPC closes a connection this old (0: never), letting calls on it run this much longer:
    # clients reconnect and spread over replicas started since.
    grpc_max_connection_age_seconds: float = 0.0
    grpc_max_connection_age_grace_seconds: float = 30.0
    # How often readiness asks PostgreSQL whether it answers.
    health_check_seconds: float = 5.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def schema(self) -> str:
        return self.service

    @property
    def outbox_retention(self) -> timedelta:
        return timedelta(hours=self.outbox_retention_hours)

    def _lookup(self, name: str) -> str | None:
        # Tests pass per-instance values through `extra`; processes use the environment.
        return self.extra.get(name) or os.environ.get(name)

    def reader(self) -> Reader:
        """For a service's own settings: parsed and checked like these."""
        return Reader(self._lookup)


def read(service: str, environ: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
    """The settings, with the default in place of each bad value, and what was bad."""
    if service not in DEFAULT_GRPC_PORTS:
        raise ValueError(f"unknown service {service!r}")
    r = Reader((os.environ if environ is None else environ).get)
    # `<SERVICE>_WORKERS` (e.g. REFERRAL_WORKERS), else GRPC_WORKERS, else 1.
    workers = r.integer(f"{service.upper()}_WORKERS", r.integer("GRPC_WORKERS", 1, minimum=1), minimum=1)
    settings = Settings(
        service=service,
        database_url=r.text("DATABASE_URL"),
        nats_url=r.text("NATS_URL"),
        grpc_port=r.integer("GRPC_PORT", DEFAULT_GRPC_PORTS[service], minimum=0, maximum=65535),
        metrics_port=r.integer("METRICS_PORT", DEFAULT_METRICS_PORTS[service], minimum=0, maximum=65535),
        log_level=r.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")).upper(),
        data_dir=Path(r.text("DATA_DIR", str(repo_root() / ".data"))),
        shutdown_grace_seconds=r.number("SHUTDOWN_GRACE_SECONDS", 20.0, minimum=1.0),
        nats_stream_replicas=r.integer("NATS_STREAM_REPLICAS", 1, minimum=1, maximum=5),
        outbox_retention_hours=r.number("OUTBOX_RETENTION_HOURS", 168.0, minimum=1.0),
        outbox_poll_seconds=r.number("OUTBOX_POLL_SECONDS", 1.0, minimum=0.01),
        consumer_max_deliver=r.integer("CONSUMER_MAX_DELIVER", 5, minimum=1),
        inbox_purge_seconds=r.number("INBOX_PURGE_SECONDS", 3600.0, minimum=1.0),
        db_pool_min=r.integer("DB_POOL_MIN", 2, minimum=0),
        db_pool_max=r.integer("DB_POOL_MAX", 10, minimum=1),
        db_command_timeout=r.number("DB_COMMAND_TIMEOUT", 10.0, minimum=0.1),
        db_acquire_timeout=r.number("DB_ACQUIRE_TIMEOUT", 5.0, minimum=0.01),
        auth_issuer=r.text("AUTH_JWT_ISSUER", "consortium-dev"),
        auth_audience=r.text("AUTH_JWT_AUDIENCE", "consortium-api"),
        auth_public_keys=r.text("AUTH_JWT_PUBLIC_KEYS"),
        pii_encryption_keys=r.text("PII_ENCRYPTION_KEYS"),
        pii_hash_key=r.text("PII_HASH_KEY"),
        dev_mode=r.flag("DEV_MODE", False),
        tls_cert_file=r.text("TLS_CERT_FILE"),
        tls_key_file=r.text("TLS_KEY_FILE"),
        tls_client_ca_file=r.text("TLS_CLIENT_CA_FILE"),
        event_loop=r.choice("EVENT_LOOP", "uvloop", EVENT_LOOPS),
        workers=workers,
        migrate_on_start=r.flag("MIGRATE_ON_START", True),
        grpc_max_connection_age_seconds=r.number("GRPC_MAX_CONNECTION_AGE_SECONDS", 0.0, minimum=0.0),
        grpc_max_connection_age_grace_seconds=r.number("GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", 30.0, minimum=0.0),
        health_check_seconds=r.number("HEALTH_CHECK_SECONDS", 5.0, minimum=0.1),
    )
    if settings.db_pool_min > settings.db_pool_max:
        r.problem("DB_POOL_MIN", f"must not exceed DB_POOL_MAX ({settings.db_pool_max})", str(settings.db_pool_min))
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        r.problem("TLS_CERT_FILE", "and TLS_KEY_FILE must be set together")
    return settings, r.problems


def load(service: str) -> Settings:
    settings, problems = read(service)
    if problems:
        raise SettingsError(problems)
    return settings
