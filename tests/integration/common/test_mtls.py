"""With a client CA configured, only clients holding a certificate from it get in."""
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import app
from services.common.devcerts import DevCA
from tests.support.slow_service import register
from tests.support.stack import running_service


def _build(ctx):
    return app.ServiceParts(registrars=[register])


async def _check(port: int, credentials) -> bool:
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            return True
        except grpc.aio.AioRpcError:
            return False


async def test_mutual_tls_refuses_missing_and_foreign_certificates(stack, tmp_path):
    ca = DevCA(tmp_path / "ca")
    rogue = DevCA(tmp_path / "rogue", name="Rogue CA")
    server = ca.issue("referral", server=True)
    good, bad = ca.issue("clinic01", server=False), rogue.issue("clinic01", server=False)
    async with running_service(stack, "referral", _build, tls_cert_file=str(server.cert_file),
                               tls_key_file=str(server.key_file), tls_client_ca_file=str(ca.cert_file)) as svc:
        root = ca.cert_file.read_bytes()
        attempts = {
            "valid client certificate": grpc.ssl_channel_credentials(
                root, good.key_file.read_bytes(), good.cert_file.read_bytes()),
            "no client certificate": grpc.ssl_channel_credentials(root),
            "certificate from another CA": grpc.ssl_channel_credentials(
                root, bad.key_file.read_bytes(), bad.cert_file.read_bytes()),
        }
        results = {name: await _check(svc.port, creds) for name, creds in attempts.items()}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as plain:
            try:
                await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
                results["plaintext"] = True
            except grpc.aio.AioRpcError:
                results["plaintext"] = False
    accepted_bad = sum(results[k] for k in results if k != "valid client certificate")
    print(f"mTLS: {results}; bad credentials accepted = {accepted_bad}")
    assert results["valid client certificate"] and accepted_bad == 0
