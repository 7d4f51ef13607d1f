"""asyncpg pool and versioned SQL migrations, one schema per service.

A service's migrations are the shared runtime's (outbox, inbox, dead letters: the same
tables in every schema) followed by its own `services/<name>/migrations/NNN_*.sql`.
Each file runs once, in its own transaction, under an advisory lock so that replicas
starting together do not race.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from services.common.logging import get_logger

log = get_logger(__name__)

COMMON_MIGRATIONS = Path(__file__).with_name("migrations")

# "The database cannot be reached right now", as opposed to "this request is wrong": a
# caller should retry later, a consumer should wait rather than dead-letter the event.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,        # lost, refused or failed connections (class 08)
    asyncpg.exceptions.AdminShutdownError,  # the server is shutting down
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # ... or still starting
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,                 # the connection is closed, the pool is closing
    # A connection the server dropped mid-call can be left in a protocol state that
    # asyncpg reports as "cannot switch to state ...; another operation is in progress".
    asyncpg_base.InternalClientError,
    OSError,                                # refused, reset, unreachable (ConnectionError)
    asyncio.TimeoutError,                   # connect timeout, command_timeout
)

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def migration_dirs(service: str) -> list[tuple[str, Path]]:
    own = Path(__file__).resolve().parents[1] / service / "migrations"
    return [("common", COMMON_MIGRATIONS), (service, own)]


def _files(prefix: str, folder: Path) -> list[tuple[str, Path]]:
    if not folder.is_dir():
        return []
    return [(f"{prefix}/{p.name}", p) for p in sorted(folder.glob("*.sql"))]


# A migration's DDL waits at most this long for a table lock: waiting, it would queue every
# query on that table behind it (live traffic of the replicas still running); refused, the
# migration rolls back and the next start tries again.
MIGRATION_LOCK_TIMEOUT_SECONDS = 5.0
# How long a starting replica waits for another one's migrations (the advisory lock).
MIGRATION_WAIT_SECONDS = 120.0


class MigrationError(Exception):
    """The schema is not where this code needs it, or could not be brought there: the
    message says what to do (a start is refused with it, no traceback)."""


def _pending(done: set[str], service: str) -> list[tuple[str, Path]]:
    return [(version, path) for prefix, folder in migration_dirs(service)
            for version, path in _files(prefix, folder) if version not in done]


async def _applied(conn: asyncpg.Connection, schema: str) -> set[str]:
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.schema_migrations"):
        return set()
    return {r["version"] for r in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")}


def _check_schema_name(schema: str) -> None:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"bad schema name {schema!r}")


async def pending(dsn: str, schema: str, service: str | None = None) -> list[str]:
    """The migrations this code has that the schema has not applied (none: it is current)."""
    _check_schema_name(schema)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [version for version, _ in _pending(await _applied(conn, schema), service or schema)]
    finally:
        await conn.close()


async def require_current(dsn: str, schema: str, service: str | None = None) -> None:
    """MIGRATE_ON_START=false: the schema must be at this code's latest migration."""
    behind = await pending(dsn, schema, service)
    if behind:
        raise MigrationError(
            f"schema {schema} is behind this code: {len(behind)} migration(s) not applied "
            f"({', '.join(behind)}); run `python -m services.{service or schema} migrate` first "
            "or start with MIGRATE_ON_START=true")


async def migrate(dsn: str, schema: str, service: str | None = None, *,
                  lock_timeout: float = MIGRATION_LOCK_TIMEOUT_SECONDS) -> list[str]:
    """Apply pending migrations; returns the versions applied now."""
    _check_schema_name(schema)
    service = service or schema
    conn = await asyncpg.connect(dsn, timeout=10)
    applied_now: list[str] = []
    try:
        # The lock key is per schema so different services migrate in parallel.
        try:
            await conn.execute(f"SET lock_timeout = '{int(MIGRATION_WAIT_SECONDS * 1000)}ms'")
            await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"migrate:{schema}")
        except asyncpg.exceptions.LockNotAvailableError:
            raise MigrationError(f"schema {schema}: another process has been migrating it for more than "
                                 f"{MIGRATION_WAIT_SECONDS:.0f} s; nothing applied") from None
        try:
            await conn.execute(f"SET lock_timeout = '{int(lock_timeout * 1000)}ms'")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            for version, path in _pending(await _applied(conn, schema), service):
                try:
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                        await conn.execute(path.read_text(encoding="utf-8"))
                        await conn.execute(
                            f"INSERT INTO {schema}.schema_migrations(version) VALUES ($1)", version)
                except asyncpg.exceptions.LockNotAvailableError:
                    raise MigrationError(
                        f"migration {version} waited more than {lock_timeout:g} s for a lock on a table in "
                        f"use and was rolled back ({len(applied_now)} applied before it); the next start "
                        "tries again") from None
                applied_now.append(version)
                log.info("migration applied", schema=schema, version=version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"migrate:{schema}")
    finally:
        await conn.close()
    return applied_now


async def answers(db: asyncpg.Pool | asyncpg.Connection, timeout: float) -> bool:
    """Whether the database answers a trivial query within `timeout`."""
    try:
        await db.fetchval("SELECT 1", timeout=timeout)
        return True
    except UNAVAILABLE_ERRORS:
        return False


async def _release_reset(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on its way back to the pool.

    asyncpg's default runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: one more round trip per use case, for session state the runtime never
    leaves on a pooled connection (settings are `SET LOCAL`, advisory locks are
    `pg_advisory_xact_lock`, cursors live in transactions, LISTEN has its own connections).
    Only a connection that somehow still holds a transaction gets the full reset.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
        await conn.execute(conn.get_reset_query())


class _Pool(asyncpg.Pool):
    """A pool whose `acquire` gives up after `acquire_timeout` unless told otherwise.

    With every connection held (a slow database, a lock queue, a burst beyond the pool), a
    call would otherwise queue until its caller's deadline, or forever for a caller that set
    none, and a consumer would sit on its fetch. Giving up raises TimeoutError, one of
    UNAVAILABLE_ERRORS: the caller gets UNAVAILABLE and retries, the consumer waits.
    """

    def __init__(self, *args, acquire_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None):  # type: ignore[override]
        return super().acquire(timeout=self._acquire_timeout if timeout is None else timeout)


async def create_pool(dsn: str, schema: str, *, min_size: int = 2, max_size: int = 10,
                      command_timeout: float = 10.0, acquire_timeout: float = 5.0) -> asyncpg.Pool:
    # asyncpg.create_pool's own defaults, spelled out because the subclass is built directly.
    return await _Pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout,
        acquire_timeout=acquire_timeout, max_queries=50000, max_inactive_connection_lifetime=300.0,
        loop=None, connection_class=asyncpg.Connection, record_class=asyncpg.Record,
        # Bounded connect so a call fails fast with UNAVAILABLE while the database is down.
        timeout=5.0,
        server_settings={"search_path": f"{schema}, public", "application_name": schema},
        reset=_release_reset,
    )
