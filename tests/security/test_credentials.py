"""Bad credentials never get in: tokens against a running service, then certificates
against the same service with mutual TLS on."""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from referral.v1 import referral_service_pb2 as rpb, referral_service_pb2_grpc as rpb_grpc
from services.common import auth
from services.common.devcerts import DevCA
from services.referral.entrypoints.app import build as build_referral
from tests.security.rpc import SERVICE_DESCRIPTORS, invoke, request_class
from tests.support.stack import running_service


def _claims(institution: str, **over) -> dict:
    now = int(time.time())
    claims = {"sub": f"{institution}:attacker", "inst": institution, "role": "clinic_doctor",
              "iss": "consortium-dev", "aud": "consortium-api", "iat": now, "exp": now + 600}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256(claims: dict, secret: str) -> str:
    """The algorithm-confusion forgery: HMAC keyed with the verifier's own public key
    (PyJWT refuses to make one, so it is made by hand)."""
    b64 = lambda raw: jwt.utils.base64url_encode(raw).decode()  # noqa: E731
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _bad_tokens(stack, institution: str) -> dict[str, str | None]:
    good_key = auth.dev_keys(stack.data_dir)
    rogue = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    sign = lambda claims, key=good_key.private_pem, alg="ES256": jwt.encode(claims, key, algorithm=alg)  # noqa: E731
    valid = sign(_claims(institution))
    header, payload, signature = valid.split(".")
    now = int(time.time())
    forged = jwt.utils.base64url_encode(json.dumps(_claims("ANOTHER-INSTITUTION")).encode()).decode()
    return {
        "no token": None,
        "not a bearer header": f"Basic {valid}",
        "garbage": "Bearer not.a.jwt",
        "expired": f"Bearer {sign(_claims(institution, iat=now - 7200, exp=now - 3600))}",
        "not yet valid": f"Bearer {sign(_claims(institution, nbf=now + 3600))}",
        "wrong issuer": f"Bearer {sign(_claims(institution, iss='rogue-issuer'))}",
        "wrong audience": f"Bearer {sign(_claims(institution, aud='another-api'))}",
        "no expiry": f"Bearer {sign(_claims(institution, exp=None))}",
        "alg=none": f"Bearer {jwt.encode(_claims(institution), None, algorithm='none')}",
        "wrong key": f"Bearer {sign(_claims(institution), rogue)}",
        "HS256 keyed with the public key": f"Bearer {_hs256(_claims(institution), good_key.public_pem)}",
        "tampered payload": f"Bearer {header}.{forged}.{signature}",
        "stripped signature": f"Bearer {header}.{payload}.",
        "unknown role": f"Bearer {sign(_claims(institution, role='superuser'))}",
        "no institution": f"Bearer {sign(_claims(institution, inst=''))}",
    }


async def _attempt(stub, name: str, authorization: str | None) -> grpc.StatusCode:
    md = (("authorization", authorization),) if authorization else ()
    try:
        await stub.GetReferral(rpb.GetReferralRequest(name=name), metadata=md, timeout=5)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_bad_tokens_are_refused_by_every_service(services, flow):
    victim = flow.referrals[0]
    clinic = victim.sending_institution_id
    accepted, codes = [], {}
    for svc in ("referral", "scheduling", "notify"):
        for label, header in _bad_tokens(services.stack, clinic).items():
            # Any method: authentication happens at the edge before the servicer runs.
            method = SERVICE_DESCRIPTORS[svc].methods[0]
            if svc == "referral":
                method = SERVICE_DESCRIPTORS[svc].methods_by_name["GetReferral"]
            request = request_class(method)(**({"name": victim.name} if svc == "referral" else {}))
            outcome = await invoke(services, svc, method, request,
                                   (("authorization", header),) if header else ())
            codes[outcome.code.name] = codes.get(outcome.code.name, 0) + 1
            if outcome.code != grpc.StatusCode.UNAUTHENTICATED:
                accepted.append((svc, label, outcome.code.name))
    # The same request with the genuine token works: the refusals are about the token.
    good = await services.referral.GetReferral(rpb.GetReferralRequest(name=victim.name),
                                               metadata=services.stack.metadata(clinic, "clinic_doctor"))
    assert good.name == victim.name
    print(f"\nbad tokens: {len(_bad_tokens(services.stack, clinic))} kinds x 3 services, codes {codes}; "
          f"accepted = {len(accepted)}")
    assert not accepted, accepted


async def test_mutual_tls_refuses_missing_and_foreign_certificates_on_a_real_service(stack, services, flow,
                                                                                      tmp_path):
    ca, rogue = DevCA(tmp_path / "ca"), DevCA(tmp_path / "rogue", name="Rogue CA")
    server = ca.issue("referral", server=True)
    good, bad = ca.issue("clinic", server=False), rogue.issue("clinic", server=False)
    victim = flow.referrals[0]
    token = f"Bearer {stack.token(victim.sending_institution_id, 'clinic_doctor')}"
    async with running_service(stack, "referral", build_referral, tls_cert_file=str(server.cert_file),
                               tls_key_file=str(server.key_file), tls_client_ca_file=str(ca.cert_file)) as svc:
        root = ca.cert_file.read_bytes()
        options = (("grpc.ssl_target_name_override", "localhost"),)
        attempts = {
            "valid certificate + valid token": (grpc.ssl_channel_credentials(
                root, good.key_file.read_bytes(), good.cert_file.read_bytes()), token),
            "valid certificate, no token": (grpc.ssl_channel_credentials(
                root, good.key_file.read_bytes(), good.cert_file.read_bytes()), None),
            "no client certificate": (grpc.ssl_channel_credentials(root), token),
            "certificate from another CA": (grpc.ssl_channel_credentials(
                root, bad.key_file.read_bytes(), bad.cert_file.read_bytes()), token),
            "server not trusted by client (rogue root)": (grpc.ssl_channel_credentials(
                rogue.cert_file.read_bytes(), good.key_file.read_bytes(), good.cert_file.read_bytes()), token),
        }
        results = {}
        for label, (creds, header) in attempts.items():
            async with grpc.aio.secure_channel(f"127.0.0.1:{svc.port}", creds, options=options) as channel:
                results[label] = await _attempt(rpb_grpc.ReferralServiceStub(channel), victim.name, header)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as plain:
            results["plaintext"] = await _attempt(rpb_grpc.ReferralServiceStub(plain), victim.name, token)
    accepted = [k for k, code in results.items() if code == grpc.StatusCode.OK and not k.startswith("valid certificate +")]
    print(f"\nmTLS on a real service: { {k: v.name for k, v in results.items()} }; accepted = {len(accepted)}")
    assert results["valid certificate + valid token"] == grpc.StatusCode.OK
    assert not accepted
