"""Protection at rest for patient identifiers (ID numbers, mobile numbers).

Values are encrypted in the application with AES-GCM under a key from configuration;
the key id is stored with the ciphertext so keys can rotate. A keyed hash (HMAC-SHA256)
of the normalised value allows exact-match lookup without decrypting anything.
PII_ENCRYPTION_KEYS: "kid1:base64key,kid2:base64key" (the first encrypts, all decrypt).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The context under which a mobile number travels in events (PatientSummary.mobile_ciphertext)
# and rests in notify's contacts: one constant, so producer and consumer cannot drift apart.
MOBILE_CONTEXT = "mobile"


class PiiCipher:
    def __init__(self, keys: dict[str, bytes], hash_key: bytes) -> None:
        if not keys:
            raise ValueError("no PII encryption key configured")
        for kid, key in keys.items():
            if len(key) not in (16, 24, 32):
                raise ValueError(f"PII key {kid} must be 128, 192 or 256 bits")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self._current = next(iter(keys))
        self._hash_key = hash_key

    @classmethod
    def from_config(cls, keys_spec: str, hash_key_b64: str, data_dir: Path | None = None) -> "PiiCipher":
        if not keys_spec and data_dir is not None:
            keys_spec, hash_key_b64 = _dev_keys(data_dir)
        keys: dict[str, bytes] = {}
        for item in filter(None, (p.strip() for p in keys_spec.split(","))):
            kid, _, b64 = item.partition(":")
            keys[kid] = base64.b64decode(b64)
        return cls(keys, base64.b64decode(hash_key_b64))

    def encrypt(self, plaintext: str, context: str = "") -> str:
        """`kid:base64(nonce||ciphertext)`; context binds the value to its column."""
        nonce = os.urandom(12)
        sealed = self._keys[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{self._current}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, context: str = "") -> str:
        kid, _, b64 = token.partition(":")
        raw = base64.b64decode(b64)
        return self._keys[kid].decrypt(raw[:12], raw[12:], context.encode()).decode()

    def lookup_hash(self, value: str) -> str:
        normalised = value.strip().upper()
        return hmac.new(self._hash_key, normalised.encode(), hashlib.sha256).hexdigest()


def _dev_keys(data_dir: Path) -> tuple[str, str]:
    path = data_dir / "pii-dev-keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        enc = base64.b64encode(os.urandom(32)).decode()
        mac = base64.b64encode(os.urandom(32)).decode()
        path.write_text(f"dev1:{enc}\n{mac}\n")
        path.chmod(0o600)
    keys_spec, hash_key = path.read_text().split()
    return keys_spec, hash_key


def mask_mobile(mobile: str) -> str:
    return mobile[:3] + "****" + mobile[-4:] if len(mobile) == 11 else "***"


def mask_id_number(id_number: str) -> str:
    return id_number[:3] + "*" * 11 + id_number[-4:] if len(id_number) == 18 else "***"
