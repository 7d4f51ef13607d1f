"""Token verification refuses everything but a valid, consortium-signed token."""
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.common import auth
from services.common.errors import Unauthenticated


def _pair():
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


PRIVATE, PUBLIC = _pair()
OTHER_PRIVATE, OTHER_PUBLIC = _pair()
VERIFIER = auth.TokenVerifier(PUBLIC, issuer="consortium-dev", audience="consortium-api")


def test_valid_token_names_institution_and_role():
    token = auth.issue_token(PRIVATE, institution_id="CLINIC01", role="clinic_doctor", subject="dr-wang")
    caller = VERIFIER.verify(token)
    assert caller == auth.Caller(subject="dr-wang", institution_id="CLINIC01", role=auth.Role.CLINIC_DOCTOR)


def test_rotation_accepts_any_configured_key():
    verifier = auth.TokenVerifier(OTHER_PUBLIC + "\n" + PUBLIC, issuer="consortium-dev", audience="consortium-api")
    assert verifier.verify(auth.issue_token(PRIVATE, institution_id="H", role="referral_desk")).institution_id == "H"


@pytest.mark.parametrize("make", [
    lambda: auth.issue_token(PRIVATE, institution_id="C", role="clinic_doctor", ttl_seconds=-120),
    lambda: auth.issue_token(PRIVATE, institution_id="C", role="clinic_doctor", issuer="someone-else"),
    lambda: auth.issue_token(PRIVATE, institution_id="C", role="clinic_doctor", audience="other-api"),
    lambda: auth.issue_token(OTHER_PRIVATE, institution_id="C", role="clinic_doctor"),
    lambda: jwt.encode({"sub": "x", "inst": "C", "role": "clinic_doctor", "iss": "consortium-dev",
                        "aud": "consortium-api", "iat": int(time.time()), "exp": int(time.time()) + 60},
                       None, algorithm="none"),
    lambda: jwt.encode({"sub": "x", "inst": "C", "role": "clinic_doctor", "iss": "consortium-dev",
                        "aud": "consortium-api", "iat": int(time.time()), "exp": int(time.time()) + 60},
                       "a-guessed-shared-secret-of-32-bytes!!", algorithm="HS256"),
    lambda: jwt.encode({"sub": "x", "inst": "C", "role": "superuser", "iss": "consortium-dev",
                        "aud": "consortium-api", "iat": int(time.time()), "exp": int(time.time()) + 60},
                       PRIVATE, algorithm="ES256"),
    lambda: jwt.encode({"sub": "x", "role": "clinic_doctor", "iss": "consortium-dev",
                        "aud": "consortium-api", "iat": int(time.time()), "exp": int(time.time()) + 60},
                       PRIVATE, algorithm="ES256"),
    lambda: "not-a-token",
], ids=["expired", "wrong-issuer", "wrong-audience", "wrong-key", "alg-none", "hs256", "unknown-role",
        "no-institution", "garbage"])
def test_bad_tokens_are_refused(make):
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(make())


def test_metadata_without_bearer_is_refused():
    with pytest.raises(Unauthenticated):
        VERIFIER.verify_metadata({})
    with pytest.raises(Unauthenticated):
        VERIFIER.verify_metadata({"authorization": "Basic abc"})


def test_a_role_refused_is_told_in_chinese_by_the_name_staff_know_it_by():
    from services.common.errors import PermissionDenied
    caller = auth.Caller("u1", "HOSP01", auth.Role.BED_MANAGER)
    with pytest.raises(PermissionDenied) as refused:
        caller.require(auth.Role.REFERRAL_DESK)
    assert refused.value.message == "床位管理员角色无权执行此操作" and refused.value.reason == "ROLE_NOT_ALLOWED"
    assert set(auth.ROLE_NAMES_ZH) == set(auth.Role)
