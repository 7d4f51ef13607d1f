"""`make run` brings the three services to SERVING, checked from a separate process."""
import asyncio
import os
import signal
import subprocess
import sys

from services.common.localstack import free_port
from tests.support.stack import REPO, wait_serving

SERVICE_NAMES = {"referral": "referral.v1.ReferralService", "scheduling": "scheduling.v1.SchedulingService",
                 "notify": "notify.v1.NotifyService"}


async def test_launcher_serves_all_three_and_stops_cleanly(tmp_path, log_dir):
    ports = {svc: free_port() for svc in SERVICE_NAMES}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    env.update(DATA_DIR=str(tmp_path), PYTHONPATH=f"{REPO / 'gen'}:{REPO}", RECEIPTS_PORT="0")
    for svc, port in ports.items():
        env[f"{svc.upper()}_GRPC_PORT"] = str(port)
        env[f"{svc.upper()}_METRICS_PORT"] = "0"  # no metrics: one port fewer to race for
    out = open(log_dir / "launcher-stdout.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "services.launcher"], env=env, cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        for svc, name in SERVICE_NAMES.items():
            await wait_serving(ports[svc], timeout=120, service=name)
        # Demo data is loaded after the services serve; the banner follows it.
        banner = ""
        for _ in range(300):
            banner = (log_dir / "launcher-stdout.log").read_text()
            if "demo data" in banner:
                break
            await asyncio.sleep(0.2)
        assert "demo data   referral, scheduling" in banner
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        # The services' own logs count for the PII scan too.
        for path in (tmp_path / "logs").glob("*.log"):
            (log_dir / f"launcher-{path.name}").write_bytes(path.read_bytes())
