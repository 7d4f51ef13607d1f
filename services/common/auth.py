"""Who is calling: a consortium-signed token (JWT, ES256) in the `authorization` metadata.

The caller's institution and role come from the token only, never from a request
body. Verification keys come from configuration (AUTH_JWT_PUBLIC_KEYS, one or more PEM
public keys); on one machine a development key pair is made under the data folder.
"""
from __future__ import annotations

import contextvars
import enum
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.common.errors import PermissionDenied, Unauthenticated

ALGORITHM = "ES256"


class Role(str, enum.Enum):
    CLINIC_DOCTOR = "clinic_doctor"
    REFERRAL_DESK = "referral_desk"
    BED_MANAGER = "bed_manager"
    CONSORTIUM_OFFICE = "consortium_office"
    SERVICE = "service"


# As staff read their role in an error message.
ROLE_NAMES_ZH = {Role.CLINIC_DOCTOR: "基层医生", Role.REFERRAL_DESK: "转诊服务中心", Role.BED_MANAGER: "床位管理员",
                 Role.CONSORTIUM_OFFICE: "医共体管理办公室", Role.SERVICE: "系统服务"}


@dataclass(frozen=True)
class Caller:
    subject: str
    institution_id: str
    role: Role
    consortium_id: str = ""

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            raise PermissionDenied(f"{ROLE_NAMES_ZH[self.role]}角色无权执行此操作", reason="ROLE_NOT_ALLOWED")


_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller:
    caller = _current.get()
    if caller is None:
        raise Unauthenticated("未认证的调用方", reason="UNAUTHENTICATED")
    return caller


def set_caller(caller: Caller | None) -> contextvars.Token:
    return _current.set(caller)


def reset_caller(token: contextvars.Token) -> None:
    _current.reset(token)


_PEM_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.S)


class TokenVerifier:
    def __init__(self, public_keys_pem: str, *, issuer: str, audience: str, leeway: float = 30.0):
        blocks = _PEM_BLOCK.findall(public_keys_pem)
        if not blocks:
            raise ValueError("AUTH_JWT_PUBLIC_KEYS holds no PEM public key")
        self._keys = [serialization.load_pem_public_key(b.encode()) for b in blocks]
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        # token -> (caller, exp): a client sends the same token on every call, and an ES256
        # verify costs more than the rest of the edge. A token accepted once stays acceptable
        # until its exp (the keys are fixed for the verifier's life), so it is verified once.
        self._verified: dict[str, tuple[Caller, float]] = {}

    CACHE_SIZE = 4096

    def verify(self, token: str) -> Caller:
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            self._verified.pop(token, None)
        caller, expires = self._verify(token)
        if expires is not None:
            if len(self._verified) >= self.CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)), None)  # the oldest entry
            self._verified[token] = (caller, expires)
        return caller

    def _verify(self, token: str) -> tuple[Caller, float | None]:
        last_error: Exception | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token, key, algorithms=[ALGORITHM], issuer=self._issuer, audience=self._audience,
                    leeway=self._leeway, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
            except jwt.InvalidSignatureError as exc:
                last_error = exc
                continue
            except jwt.PyJWTError as exc:
                raise Unauthenticated(f"令牌无效：{exc}", reason="BAD_TOKEN") from exc
            try:
                role = Role(claims.get("role", ""))
            except ValueError as exc:
                raise Unauthenticated("令牌中的角色无效", reason="BAD_TOKEN") from exc
            institution = str(claims.get("inst", ""))
            if not institution:
                raise Unauthenticated("令牌未指明机构", reason="BAD_TOKEN")
            caller = Caller(subject=str(claims["sub"]), institution_id=institution, role=role,
                            consortium_id=str(claims.get("cons", "")))
            exp = claims.get("exp")
            # Cached only while valid without the leeway, and never past a not-before.
            cacheable = isinstance(exp, (int, float)) and "nbf" not in claims
            return caller, float(exp) if cacheable else None
        raise Unauthenticated(f"令牌无效：{last_error}", reason="BAD_TOKEN")

    def verify_metadata(self, metadata: dict[str, str]) -> Caller:
        header = metadata.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise Unauthenticated("缺少Bearer令牌", reason="NO_TOKEN")
        return self.verify(header[7:].strip())


@dataclass(frozen=True)
class DevKeys:
    private_pem: str
    public_pem: str


def dev_keys(data_dir: Path) -> DevKeys:
    """A development key pair under the data folder, made once and reused."""
    folder = data_dir / "auth"
    private_path, public_path = folder / "jwt-private.pem", folder / "jwt-public.pem"
    if not private_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        private_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        private_path.chmod(0o600)
        public_path.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return DevKeys(private_path.read_text(), public_path.read_text())


def issue_token(private_pem: str, *, institution_id: str, role: Role | str, subject: str = "",
                issuer: str = "consortium-dev", audience: str = "consortium-api",
                ttl_seconds: int = 3600, consortium_id: str = "") -> str:
    now = int(time.time())
    claims = {"sub": subject or f"{institution_id}:{uuid.uuid4().hex[:8]}", "inst": institution_id,
              "role": Role(role).value, "iss": issuer, "aud": audience, "iat": now,
              "exp": now + ttl_seconds, "jti": uuid.uuid4().hex}
    if consortium_id:
        claims["cons"] = consortium_id
    return jwt.encode(claims, private_pem, algorithm=ALGORITHM)
