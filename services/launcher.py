"""`make run`: the whole system on one machine.

Starts (or uses, when DATABASE_URL or NATS_URL is set) PostgreSQL and a JetStream
nats-server, runs the three services as separate processes on their standard ports,
waits until each reports SERVING on the standard health service, loads the demo
consortium, and serves until Ctrl-C. With no vendor credentials configured, notify
talks to sandbox WeChat/SMS servers on loopback, so every message can be seen.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import auth, config
from services.common import logging as logs

SERVICES = ("referral", "scheduling", "notify")
REPO = config.repo_root()
if str(REPO / "gen") not in sys.path:  # run directly, not through make
    sys.path.insert(0, str(REPO / "gen"))

log = logs.get_logger("launcher")


def _token_for(data_dir: Path):
    keys = auth.dev_keys(data_dir)

    def token_for(institution_id: str, role: str) -> str:
        return auth.issue_token(keys.private_pem, institution_id=institution_id, role=role,
                                ttl_seconds=12 * 3600)
    return token_for


async def wait_serving(port: int, name: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{name or 'service'} on port {port} is not SERVING after {timeout:.0f}s")


class Launcher:
    def __init__(self, data_dir: Path, env_overrides: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.stack = None
        self.sandbox = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ)
        self.env.update(env_overrides or {})
        self.env.setdefault("DEV_MODE", "1")
        self.env["DATA_DIR"] = str(data_dir)
        self.env["PYTHONPATH"] = f"{REPO / 'gen'}:{REPO}"
        self.ports = {svc: int(self.env.get(f"{svc.upper()}_GRPC_PORT", config.DEFAULT_GRPC_PORTS[svc]))
                      for svc in SERVICES}
        self.metrics_ports = {svc: int(self.env.get(f"{svc.upper()}_METRICS_PORT",
                                                    config.DEFAULT_METRICS_PORTS[svc])) for svc in SERVICES}

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        need_postgres, need_nats = not self.env.get("DATABASE_URL"), not self.env.get("NATS_URL")
        if need_postgres or need_nats:
            from services.common.localstack import LocalStack

            # Only what is missing: a server given by URL is the one to use.
            self.stack = await asyncio.to_thread(LocalStack.start, self.data_dir, postgres=need_postgres,
                                                 nats=need_nats)
            self.env.update(self.stack.env())
        if not (self.env.get("ALIYUN_ACCESS_KEY_ID") or self.env.get("TENCENT_SECRET_ID")):
            self.env.update(await self._start_sandbox_vendors())
        logs_dir = self.data_dir / "logs"
        logs_dir.mkdir(exist_ok=True)
        for svc in SERVICES:
            env = dict(self.env)
            env["GRPC_PORT"] = str(self.ports[svc])
            env["METRICS_PORT"] = str(self.metrics_ports[svc])
            out = open(logs_dir / f"{svc}.log", "ab")  # noqa: SIM115 - lives as long as the child
            self.procs[svc] = subprocess.Popen([sys.executable, "-m", f"services.{svc}", "serve"],
                                               env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        serving = asyncio.gather(*(wait_serving(self.ports[svc], "") for svc in SERVICES))
        while not serving.done():
            dead = [svc for svc, proc in self.procs.items() if proc.poll() is not None]
            if dead:
                serving.cancel()
                raise SystemExit("; ".join(f"{svc} exited with {self.procs[svc].returncode}, see "
                                           f"{logs_dir / (svc + '.log')}" for svc in dead))
            await asyncio.wait({serving}, timeout=0.5)
        serving.result()

    async def _start_sandbox_vendors(self) -> dict[str, str]:
        """The test suite's fake vendors (a development tool, absent from the image)."""
        try:
            sandbox = importlib.import_module("tests.fakes.sandbox")
        except ModuleNotFoundError:
            return {}
        port = self.env.get("RECEIPTS_PORT", "8080")
        self.sandbox = await sandbox.start(receipts_url=f"http://127.0.0.1:{port}")
        return {**self.sandbox.env(), "RECEIPTS_PORT": port}

    async def load_demo(self) -> list[str]:
        token_for = _token_for(self.data_dir)
        loaded = []
        for svc in ("referral", "scheduling", "notify"):
            try:
                module = importlib.import_module(f"services.{svc}.demo")
            except ModuleNotFoundError as exc:
                if exc.name != f"services.{svc}.demo":
                    raise
                continue
            await module.load_demo(f"127.0.0.1:{self.ports[svc]}", token_for)
            loaded.append(svc)
        return loaded

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for svc, proc in self.procs.items():
            try:
                await asyncio.to_thread(proc.wait, 40)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.sandbox is not None:
            await self.sandbox.stop()
        if self.stack is not None:
            await asyncio.to_thread(self.stack.stop)


def _banner(launcher: Launcher, loaded: list[str]) -> str:
    token = _token_for(launcher.data_dir)
    lines = ["", "The consortium is running (Ctrl-C stops everything):", ""]
    for svc in SERVICES:
        lines.append(f"  {svc:<11} gRPC 127.0.0.1:{launcher.ports[svc]}   metrics http://127.0.0.1:"
                     f"{launcher.metrics_ports[svc]}/metrics")
    lines += [
        f"  PostgreSQL  {launcher.env['DATABASE_URL']}",
        f"  NATS        {launcher.env['NATS_URL']}",
        f"  logs        {launcher.data_dir / 'logs'}",
        f"  demo data   {', '.join(loaded) or 'none'}",
        "",
        "Every call needs a token naming an institution and a role, e.g. the township clinic CLINIC01:",
        f"  TOKEN={token('CLINIC01', 'clinic_doctor')[:24]}...   (full: python -m services.launcher token CLINIC01 clinic_doctor)",
        f"  grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" 127.0.0.1:{launcher.ports['referral']} list",
        f"Health (no token): grpcurl -plaintext 127.0.0.1:{launcher.ports['referral']} grpc.health.v1.Health/Check",
        "",
    ]
    return "\n".join(lines)


def _dev_certs(folder: Path) -> str:
    """A local CA, a server certificate per service and a client certificate (mTLS)."""
    from services.common.devcerts import DevCA

    ca = DevCA(folder)
    lines = [f"CA: {ca.cert_file}", ""]
    for svc in SERVICES:
        issued = ca.issue(svc, server=True)
        lines.append(f"{svc}: TLS_CERT_FILE={issued.cert_file} TLS_KEY_FILE={issued.key_file} "
                     f"TLS_CLIENT_CA_FILE={ca.cert_file}")
    client = ca.issue("clinic-system", server=False)
    lines += ["", "A clinic system (client certificate):",
              f"  grpcurl -cacert {ca.cert_file} -cert {client.cert_file} -key {client.key_file} "
              f"-H \"authorization: Bearer $TOKEN\" localhost:50051 list"]
    return "\n".join(lines)


async def _serve(data_dir: Path) -> None:
    launcher = Launcher(data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print("starting PostgreSQL, NATS and the services ...", flush=True)
        await launcher.start()
        loaded = await launcher.load_demo()
        print(_banner(launcher, loaded), flush=True)
        await stop.wait()
        print("stopping ...", flush=True)
    finally:
        await launcher.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.launcher")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run everything (default)")
    tok = sub.add_parser("token", help="print a development token")
    tok.add_argument("institution")
    tok.add_argument("role", choices=[r.value for r in auth.Role])
    sub.add_parser("certs", help="make a development CA and mTLS certificates, print how to use them")
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("DATA_DIR", REPO / ".data"))
    if args.command == "token":
        print(_token_for(data_dir)(args.institution, args.role))
        return
    if args.command == "certs":
        print(_dev_certs(data_dir / "tls"))
        return
    logs.configure(os.environ.get("LOG_LEVEL", "WARNING"), service="launcher")
    asyncio.run(_serve(data_dir))


if __name__ == "__main__":
    main()
