"""The whole system on one machine, for the end-to-end test, `make demo` and `make bench`.

A thin wrapper over `services.launcher.Launcher` (what `make run` runs): the same three
service processes, started and health-checked the same way, with three differences a
harness needs and `make run` does not:

- free gRPC ports and no metrics port, so it runs next to a `make run` or another harness;
- the notify service talks to the loopback vendor fakes of `tests/fakes`, whose records
  are time-stamped on arrival (message latency is measured there, as a patient sees it);
- an existing PostgreSQL/NATS (the test session's) can be used instead of a fresh one.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from pathlib import Path

import grpc

from notify.v1 import notify_service_pb2_grpc as notify_grpc
from referral.v1 import referral_service_pb2_grpc as referral_grpc
from scheduling.v1 import scheduling_service_pb2_grpc as scheduling_grpc
from services.common import auth
from services.common.localstack import free_port
from services.launcher import SERVICES, Launcher
from tests.fakes.receipts import ReceiptPusher
from tests.fakes.sandbox import WECHAT_EVENT_TOKEN, fakes, vendor_env

STOP_WAIT_SECONDS = 5.0


class _Stamped(list):
    """The fakes append every accepted message here; the arrival time is what a
    patient would see, so latency is measured against it."""

    def append(self, record) -> None:  # noqa: D401 - list protocol
        record["t"] = time.time()
        super().append(record)


class System(Launcher):
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        ports = {f"{svc.upper()}_GRPC_PORT": str(free_port()) for svc in SERVICES}
        # No metrics endpoint, so a harness never collides with a running `make run`.
        ports.update({f"{svc.upper()}_METRICS_PORT": "0" for svc in SERVICES})
        # The fakes' credentials stand in for real ones, so the launcher's own sandbox hook
        # runs only because we override it below; LOG_LEVEL keeps the harness's disks quiet.
        super().__init__(data_dir, {**ports, "LOG_LEVEL": "INFO", **(env or {})})
        self.wechat = self.aliyun = self.tencent = None
        self.receipts: ReceiptPusher | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def _start_sandbox_vendors(self) -> dict[str, str]:
        self.wechat, self.aliyun, self.tencent = fakes()
        for fake in (self.wechat, self.aliyun, self.tencent):
            fake.accepted = _Stamped()
            await fake.start()
        # The vendors report each message's fate back to notify, as they do in service.
        receipts_port = self.env.get("RECEIPTS_PORT") or str(free_port())
        self.receipts = ReceiptPusher(self.aliyun, self.tencent, f"http://127.0.0.1:{receipts_port}",
                                      wechat=self.wechat, wechat_token=WECHAT_EVENT_TOKEN)
        self.receipts.start()
        # A harness compresses a day into minutes: no quiet hours, a fast dispatcher, no
        # per-number spacing (the synthetic patients are few and message often).
        env = {**vendor_env(self.wechat, self.aliyun, self.tencent), "RECEIPTS_PORT": receipts_port,
               "QUIET_HOURS": "off",
               "NOTIFY_DISPATCH_POLL_SECONDS": "0.2", "NOTIFY_RETRY_BASE_SECONDS": "0.2",
               "NOTIFY_SMS_MIN_SPACING_SECONDS": "0", "NOTIFY_SMS_PER_HOUR": "50", "NOTIFY_SMS_PER_DAY": "100",
               "NOTIFY_SMS_SAME_TEMPLATE_PER_DAY": "50"}
        # Caller-provided NOTIFY_* settings (e.g. a reminder offset) win over the fakes' defaults.
        return {**env, **{k: v for k, v in self.env.items() if k.startswith("NOTIFY_") or k == "QUIET_HOURS"}}

    async def start(self) -> None:
        if self.env.get("ALIYUN_ACCESS_KEY_ID"):
            raise RuntimeError("System always uses the vendor fakes; unset ALIYUN_ACCESS_KEY_ID")
        await super().start()

    async def stop(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        # A harness has no in-flight work worth a full graceful stop: everything acknowledged
        # is committed already.
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
        await super().stop()
        if self.receipts is not None:
            await self.receipts.stop()
        for fake in (self.wechat, self.aliyun, self.tencent):
            if fake is not None:
                await fake.stop()

    async def __aenter__(self) -> "System":
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ------------------------------------------------------------------ clients

    def address(self, svc: str) -> str:
        return f"127.0.0.1:{self.ports[svc]}"

    def channel(self, svc: str) -> grpc.aio.Channel:
        if svc not in self._channels:
            self._channels[svc] = grpc.aio.insecure_channel(self.address(svc))
        return self._channels[svc]

    @property
    def referral(self) -> referral_grpc.ReferralServiceStub:
        return referral_grpc.ReferralServiceStub(self.channel("referral"))

    @property
    def scheduling(self) -> scheduling_grpc.SchedulingServiceStub:
        return scheduling_grpc.SchedulingServiceStub(self.channel("scheduling"))

    @property
    def notify(self) -> notify_grpc.NotifyServiceStub:
        return notify_grpc.NotifyServiceStub(self.channel("notify"))

    def token(self, institution_id: str, role: str) -> str:
        keys = auth.dev_keys(self.data_dir)
        return auth.issue_token(keys.private_pem, institution_id=institution_id, role=role, ttl_seconds=12 * 3600)

    def metadata(self, institution_id: str, role: str) -> tuple:
        return (("authorization", f"Bearer {self.token(institution_id, role)}"),)

    # ------------------------------------------------------------------ observation

    def messages(self) -> list[dict]:
        """Every message the vendors accepted, with channel and arrival time."""
        out = [{**m, "channel": "wechat"} for m in self.wechat.accepted]
        out += [{**m, "channel": "sms", "vendor": "aliyun"} for m in self.aliyun.accepted]
        out += [{**m, "channel": "sms", "vendor": "tencent"} for m in self.tencent.accepted]
        return out

    def peak_memory_kib(self) -> dict[str, int]:
        """VmHWM (peak resident set) of each service: its process, plus its worker processes
        when it runs several (<SERVICE>_WORKERS, summed)."""
        peaks = {}
        for svc, proc in self.procs.items():
            pids = [proc.pid]
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{proc.pid}/task").iterdir():
                    pids += [int(c) for c in (task / "children").read_text().split()]
            for pid in pids:
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peaks[svc] = peaks.get(svc, 0) + int(line.split()[1])
        return peaks


def referral_id_of(message: dict) -> str:
    """The referral a WeChat message is about (its mini-program page names it)."""
    page = message.get("page") or ""
    return page.split("id=", 1)[1] if "id=" in page else ""
