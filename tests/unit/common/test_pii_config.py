import base64
import os

import pytest
from cryptography.exceptions import InvalidTag

from services.common import config
from services.common.pii import PiiCipher, mask_id_number, mask_mobile


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_encrypt_roundtrip_with_key_id_and_context():
    cipher = PiiCipher.from_config(f"k1:{_key()}", _key())
    token = cipher.encrypt("13812345678", context="mobile")
    assert token.startswith("k1:") and "13812345678" not in token
    assert cipher.decrypt(token, context="mobile") == "13812345678"
    with pytest.raises(InvalidTag):
        cipher.decrypt(token, context="id_number")  # a value cannot be moved to another column


def test_rotation_new_key_encrypts_old_key_still_decrypts():
    old, new, mac = _key(), _key(), _key()
    before = PiiCipher.from_config(f"k1:{old}", mac).encrypt("11010519491231002X")
    rotated = PiiCipher.from_config(f"k2:{new},k1:{old}", mac)
    assert rotated.decrypt(before) == "11010519491231002X"
    assert rotated.encrypt("x").startswith("k2:")


def test_lookup_hash_is_keyed_and_normalised():
    mac = _key()
    a = PiiCipher.from_config(f"k1:{_key()}", mac)
    b = PiiCipher.from_config(f"k1:{_key()}", _key())
    assert a.lookup_hash("11010519491231002x") == a.lookup_hash(" 11010519491231002X ")
    assert a.lookup_hash("11010519491231002X") != b.lookup_hash("11010519491231002X")


def test_masks():
    assert mask_mobile("13812345678") == "138****5678"
    assert mask_id_number("11010519491231002X") == "110***********002X"


def test_config_defaults_and_overrides(monkeypatch):
    for name in ("GRPC_PORT", "METRICS_PORT", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    s = config.load("scheduling")
    assert (s.grpc_port, s.metrics_port, s.schema) == (50052, 9092, "scheduling")
    monkeypatch.setenv("GRPC_PORT", "6000")
    assert config.load("scheduling").grpc_port == 6000
    monkeypatch.setenv("GRPC_PORT", "six")
    with pytest.raises(ValueError, match="GRPC_PORT"):
        config.load("scheduling")
