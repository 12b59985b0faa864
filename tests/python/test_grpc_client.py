"""kmsgate speaks the Kubernetes KMS wire protocol, not just to itself.

These tests talk to the real `kmsgate serve` binary (running the local-aes
provider on a throwaway Unix socket) with Python grpcio stubs generated from
the upstream KMS v2 and v1beta1 protos. A round trip here proves that a
client sharing no code with kmsgate, only the `.proto` files, can get status,
encrypt and decrypt, and that bad requests map to the documented gRPC codes.
"""

import os
import uuid

import grpc
import pytest

# Long enough for a cold provider call, short enough that a hang fails fast.
CALL_TIMEOUT_S = 10
# kmsgate's cap on a v2 ciphertext (crates/core/src/limits.rs), which is the cap
# Kubernetes puts on it.
MAX_CIPHERTEXT_BYTES = 1024


def _uid() -> str:
    return str(uuid.uuid4())


def _call(method, request):
    """Every call is bounded, so a hung daemon fails the test instead of
    blocking the run."""
    return method(request, timeout=CALL_TIMEOUT_S)


def _expect_code(code, method, request):
    with pytest.raises(grpc.RpcError) as caught:
        _call(method, request)
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def _encrypt(v2, client, plaintext):
    return _call(client.Encrypt, v2.EncryptRequest(plaintext=plaintext, uid=_uid()))


def _decrypt_request(v2, ciphertext, key_id, annotations):
    return v2.DecryptRequest(
        ciphertext=ciphertext, uid=_uid(), key_id=key_id, annotations=annotations
    )


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


# KMS v2


def test_v2_status_reports_version_health_and_namespaced_key_id(v2, v2_client):
    status = _call(v2_client.Status, v2.StatusRequest())
    assert status.version == "v2"
    assert status.healthz == "ok"
    assert status.key_id == "local/k1"


def test_v2_encrypt_returns_the_status_key_id_and_a_bounded_ciphertext(v2, v2_client):
    status = _call(v2_client.Status, v2.StatusRequest())
    sealed = _encrypt(v2, v2_client, os.urandom(32))
    assert sealed.key_id == status.key_id
    assert 0 < len(sealed.ciphertext) <= MAX_CIPHERTEXT_BYTES


def test_v2_decrypt_returns_the_plaintext(v2, v2_client):
    plaintext = os.urandom(32)
    sealed = _encrypt(v2, v2_client, plaintext)
    request = _decrypt_request(v2, sealed.ciphertext, sealed.key_id, dict(sealed.annotations))
    assert _call(v2_client.Decrypt, request).plaintext == plaintext


def test_v2_decrypt_rejects_tampered_ciphertext(v2, v2_client):
    sealed = _encrypt(v2, v2_client, os.urandom(32))
    request = _decrypt_request(
        v2, _flip_last_byte(sealed.ciphertext), sealed.key_id, dict(sealed.annotations)
    )
    _expect_code(grpc.StatusCode.INVALID_ARGUMENT, v2_client.Decrypt, request)


def test_v2_decrypt_rejects_garbage_ciphertext(v2, v2_client):
    request = _decrypt_request(v2, b"this is not a ciphertext", "local/k1", {})
    _expect_code(grpc.StatusCode.INVALID_ARGUMENT, v2_client.Decrypt, request)


def test_v2_decrypt_with_unknown_provider_is_not_found(v2, v2_client):
    sealed = _encrypt(v2, v2_client, os.urandom(32))
    request = _decrypt_request(v2, sealed.ciphertext, "nobody/k1", dict(sealed.annotations))
    _expect_code(grpc.StatusCode.NOT_FOUND, v2_client.Decrypt, request)


def test_v2_encrypt_rejects_empty_plaintext(v2, v2_client):
    request = v2.EncryptRequest(plaintext=b"", uid=_uid())
    _expect_code(grpc.StatusCode.INVALID_ARGUMENT, v2_client.Encrypt, request)


def test_v2_decrypt_rejects_oversize_ciphertext(v2, v2_client):
    request = _decrypt_request(v2, os.urandom(MAX_CIPHERTEXT_BYTES + 1), "local/k1", {})
    _expect_code(grpc.StatusCode.INVALID_ARGUMENT, v2_client.Decrypt, request)


# KMS v1beta1


def test_v1beta1_version_names_the_runtime(v1beta1, v1beta1_client):
    version = _call(v1beta1_client.Version, v1beta1.VersionRequest(version="v1beta1"))
    assert version.version == "v1beta1"
    assert version.runtime_name == "kmsgate"


def test_v1beta1_round_trip(v1beta1, v1beta1_client):
    plain = os.urandom(32)
    sealed = _call(v1beta1_client.Encrypt, v1beta1.EncryptRequest(version="v1beta1", plain=plain))
    assert sealed.cipher and sealed.cipher != plain
    opened = _call(
        v1beta1_client.Decrypt, v1beta1.DecryptRequest(version="v1beta1", cipher=sealed.cipher)
    )
    assert opened.plain == plain


def test_v1beta1_decrypt_rejects_garbage_cipher(v1beta1, v1beta1_client):
    request = v1beta1.DecryptRequest(version="v1beta1", cipher=b"this is not a ciphertext")
    _expect_code(grpc.StatusCode.INVALID_ARGUMENT, v1beta1_client.Decrypt, request)
