"""vault-transit-py: a Vault / OpenBao Transit provider in Python.

The example provider for vendors writing in Python (componentize-py): the
same contract and settings as the Rust `vault-transit`, in one file, on the
WIT bindings alone. Data keys are encrypted and decrypted by Transit; the
key never leaves Vault, and the Vault token never enters the sandbox: the
host sends it, through the operator's auth (setting `auth`) or the secret
`token`.

Settings (wasi:config/store):
- `address` (required): `http(s)://host:port` of Vault, also in the
  operator's `allowed_hosts`.
- `key` (required): the Transit key; `mount` (default `transit`).
- `auth` (optional): the operator's auth that supplies the token; without
  it the host sends the secret `token` as X-Vault-Token.

Key id `{key}:v{N}`, N the Transit key's latest version, so a rotation in
Vault rotates the key id. Errors follow docs/writing-a-provider.md.
"""

import base64
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import kms
from wit_world.imports import outbound_http as http
from wit_world.imports import store, types

# Vault's messages are passed on, cut to this many characters.
MAX_MESSAGE = 200


def fail(error):
    """Raises a kms-error as the WIT's `result` error."""
    raise Err(error)


class Settings:
    def __init__(self):
        def get(name, default=None):
            try:
                value = store.get(name)
            except Err:
                fail(types.KmsError_InvalidConfig("settings unreadable"))
            value = (value or "").strip()
            return value or default

        self.address = (get("address") or "").rstrip("/")
        if not self.address.startswith(("http://", "https://")):
            fail(types.KmsError_InvalidConfig("setting `address` must be http(s)://host:port"))
        self.key = get("key")
        if not self.key or not all(c.isalnum() or c in "_.-" for c in self.key):
            fail(types.KmsError_InvalidConfig("setting `key` must be A-Z a-z 0-9 _ . -"))
        self.mount = get("mount", "transit").strip("/")
        self.auth = get("auth")

    def key_id(self, version):
        return f"{self.key}:v{version}"

    def version(self, key_id):
        prefix = f"{self.key}:v"
        if key_id.startswith(prefix) and key_id[len(prefix):].isdigit():
            return int(key_id[len(prefix):])
        fail(types.KmsError_UnknownKey(f"key id {key_id[:100]!r} is not {prefix}<version>"))

    def call(self, method, endpoint, body=None):
        """Sends a Transit request through the host; the JSON `data` of a
        2xx answer, or a kms-error."""
        url = f"{self.address}/v1/{self.mount}/{endpoint}/{self.key}"
        headers = []
        payload = b""
        if body is not None:
            headers.append(("content-type", "application/json"))
            payload = json.dumps(body).encode()
        secret_headers = [] if self.auth else [("x-vault-token", "token")]
        request = http.Request(method, url, headers, secret_headers, payload)
        try:
            if self.auth:
                response = http.send_with_auth(self.auth, request)
            else:
                response = http.send(request)
        except Err as error:
            fail(transport_error(error.value, f"{endpoint} {self.key}"))
        if 200 <= response.status < 300:
            try:
                return json.loads(response.body)["data"]
            except (ValueError, KeyError, TypeError):
                fail(types.KmsError_Internal("Vault's answer does not parse"))
        fail(status_error(response.status, response.body, endpoint))


def vault_errors(body):
    try:
        return "; ".join(json.loads(body).get("errors", []))[:MAX_MESSAGE]
    except (ValueError, AttributeError):
        return ""


def status_error(status, body, endpoint):
    message = vault_errors(body)
    context = f"{endpoint}: HTTP {status}: {message}"
    lowered = message.lower()
    if status == 400 and endpoint == "decrypt" and (
        "invalid ciphertext" in lowered
        or "message authentication failed" in lowered
        or "ciphertext" in lowered
    ):
        return types.KmsError_InvalidCiphertext(context)
    if status == 404 or "encryption key not found" in lowered:
        return types.KmsError_UnknownKey(context)
    if status in (401, 403):
        return types.KmsError_PermissionDenied(context)
    if status == 429 or status >= 500:
        return types.KmsError_Unavailable(context)
    return types.KmsError_Internal(context)


def transport_error(error, context):
    if isinstance(error, http.HttpError_Denied):
        return types.KmsError_PermissionDenied(f"{context}: {error.value}")
    if isinstance(error, (http.HttpError_UnknownSecret, http.HttpError_InvalidRequest)):
        return types.KmsError_InvalidConfig(f"{context}: {error.value}")
    if isinstance(error, http.HttpError_ResponseTooLarge):
        return types.KmsError_Internal(f"{context}: answer over {error.value} bytes")
    if isinstance(error, http.HttpError_Timeout):
        return types.KmsError_Unavailable(f"{context}: timed out")
    return types.KmsError_Unavailable(f"{context}: {getattr(error, 'value', error)}")


class Kms(exports.Kms):
    def init(self):
        Settings()

    def status(self):
        settings = Settings()
        data = settings.call(http.Method.GET, "keys")
        version = data.get("latest_version")
        if not isinstance(version, int) or version < 1:
            fail(types.KmsError_Internal("Vault's key answer has no latest_version"))
        return kms.StatusInfo(
            settings.key_id(version), True, f"transit key {settings.key} at version {version}"
        )

    def encrypt(self, uid, key_id, plaintext):
        settings = Settings()
        if not plaintext:
            fail(types.KmsError_InvalidArgument("empty plaintext"))
        version = settings.version(key_id)
        body = {"plaintext": base64.b64encode(plaintext).decode(), "key_version": version}
        data = settings.call(http.Method.POST, "encrypt", body)
        ciphertext = data.get("ciphertext", "")
        if not ciphertext.startswith(f"vault:v{version}:"):
            fail(types.KmsError_Internal("Vault answered a ciphertext of another version"))
        return kms.Encrypted(ciphertext.encode(), key_id, [])

    def decrypt(self, uid, key_id, ciphertext, annotations):
        settings = Settings()
        version = settings.version(key_id)
        try:
            text = ciphertext.decode("ascii")
        except UnicodeDecodeError:
            fail(types.KmsError_InvalidCiphertext("not a Transit ciphertext"))
        if not text.startswith(f"vault:v{version}:"):
            fail(types.KmsError_InvalidCiphertext(f"not a Transit ciphertext of {key_id[:100]}"))
        data = settings.call(http.Method.POST, "decrypt", {"ciphertext": text})
        try:
            return base64.b64decode(data["plaintext"], validate=True)
        except (KeyError, TypeError, ValueError):
            fail(types.KmsError_Internal("Vault answered a plaintext that is not base64"))
