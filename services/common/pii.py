"""Protection at rest for patient identifiers (ID numbers, mobile numbers).

Values are encrypted in the application with AES-GCM under a key from configuration;
the key id is stored with the ciphertext so keys can rotate. A keyed hash (HMAC-SHA256)
of the normalised value allows exact-match lookup without decrypting anything.
PII_ENCRYPTION_KEYS: "kid1:base64key,kid2:base64key" (the first encrypts, all decrypt):
the first key 32 bytes (AES-256), later decrypt-only keys 16, 24 or 32 bytes, so data
written under an older, shorter key stays readable after a rotation. PII_HASH_KEY: base64,
ideally of at least 32 bytes; a shorter one is accepted with a warning, because changing
it orphans every stored lookup hash, so it needs a planned rotation, not a refusal at
start. A message about a bad key names the variable and the entry's position, never the
key or anything from it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.config import SettingsError
from services.common.logging import get_logger

log = get_logger(__name__)

# New data is encrypted under AES-256 only.
KEY_BYTES = 32
# Keys that only decrypt may be any AES size: older deployments had 128- and 192-bit keys,
# and refusing them after a rotation would make their data unreadable.
DECRYPT_KEY_BYTES = (16, 24, 32)
# An HMAC key shorter than the hash's output makes the lookup hashes of phone and ID
# numbers (a small space) easier to brute-force back: warned about, not refused (see above).
MIN_HASH_KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_NEEDED = "(DEV_MODE=1 generates local keys)"

# The context under which a mobile number travels in events (PatientSummary.mobile_ciphertext)
# and rests in notify's contacts: one constant, so producer and consumer cannot drift apart.
MOBILE_CONTEXT = "mobile"


class PiiCipher:
    def __init__(self, keys: dict[str, bytes], hash_key: bytes) -> None:
        if not keys:
            raise ValueError("no PII encryption key configured")
        if not hash_key:
            raise ValueError("no PII hash key configured")
        for position, key in enumerate(keys.values(), 1):
            # The position, not the key id: a spec without "kid:" makes the key its own id.
            if position == 1 and len(key) != KEY_BYTES:
                raise ValueError(f"PII encryption key 1 (the one that encrypts) must be {KEY_BYTES * 8} bits")
            if len(key) not in DECRYPT_KEY_BYTES:
                raise ValueError(f"PII encryption key {position} must be 128, 192 or 256 bits")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self._current = next(iter(keys))
        self._hash_key = hash_key

    @classmethod
    def from_config(cls, keys_spec: str, hash_key_b64: str, data_dir: Path | None = None) -> "PiiCipher":
        """From PII_ENCRYPTION_KEYS and PII_HASH_KEY; with `data_dir` (development) and
        neither set, from keys generated there. SettingsError for anything else incomplete."""
        if not keys_spec and not hash_key_b64 and data_dir is not None:
            keys_spec, hash_key_b64 = _dev_keys(data_dir)
        problems: list[str] = []
        keys = _encryption_keys(keys_spec, problems)
        hash_key = _hash_key(hash_key_b64, problems)
        if problems:
            raise SettingsError(problems)
        return cls(keys, hash_key)

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


def _decode(b64: str) -> bytes | None:
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None


def _encryption_keys(spec: str, problems: list[str]) -> dict[str, bytes]:
    entries = [p.strip() for p in spec.split(",") if p.strip()]
    if not entries:
        problems.append(f"PII_ENCRYPTION_KEYS must be set: kid:base64key[,kid:base64key...] {_NEEDED}")
    keys: dict[str, bytes] = {}
    for position, item in enumerate(entries, 1):
        kid, colon, b64 = item.partition(":")
        where = f"PII_ENCRYPTION_KEYS entry {position}"
        if not colon or not _KID.match(kid):
            problems.append(f"{where} must be kid:base64key (an id of letters, digits, '_', '.' or '-', "
                            "a colon, then the key)")
            continue
        if kid in keys:
            problems.append(f"{where} repeats the key id of an earlier entry")
            continue
        key = _decode(b64)
        if key is None:
            problems.append(f"{where}: the key is not valid base64")
        elif position == 1 and len(key) != KEY_BYTES:
            problems.append(f"{where}: the key that encrypts must be {KEY_BYTES} bytes (AES-256), "
                            f"it is {len(key)}")
        elif len(key) not in DECRYPT_KEY_BYTES:
            problems.append(f"{where}: a decrypt-only key must be 16, 24 or 32 bytes, it is {len(key)}")
        else:
            keys[kid] = key
    return keys


def _hash_key(b64: str, problems: list[str]) -> bytes:
    if not b64:
        problems.append(f"PII_HASH_KEY must be set: base64 of at least {MIN_HASH_KEY_BYTES} random bytes {_NEEDED}")
        return b""
    key = _decode(b64)
    if key is None:
        problems.append("PII_HASH_KEY is not valid base64")
        return b""
    if not key:
        problems.append("PII_HASH_KEY decodes to no bytes")
    elif len(key) < MIN_HASH_KEY_BYTES:
        # Not refused: the stored lookup hashes were made with this key. Never the key itself.
        log.warning("PII_HASH_KEY is shorter than recommended: plan a rotation to a longer key "
                    "(it means recomputing every stored lookup hash)",
                    bytes=len(key), recommended_bytes=MIN_HASH_KEY_BYTES)
    return key


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
