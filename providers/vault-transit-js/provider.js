// vault-transit-js: a Vault / OpenBao Transit provider in JavaScript.
//
// The example provider for vendors writing in JavaScript (componentize-js):
// the same contract, settings and key ids as the Rust `vault-transit`, in
// one file, on the WIT alone. Data keys are encrypted and decrypted by
// Transit; the key never leaves Vault, and the Vault token never enters the
// sandbox: the host sends it, through the operator's auth (setting `auth`)
// or the secret `token`.
//
// Settings (wasi:config/store): `address` (required, http(s)://host:port,
// also in the operator's allowed_hosts), `key` (required), `mount`
// (default `transit`), `auth` (optional).
//
// Key id `{key}:v{N}`, N the Transit key's latest version. Expected
// failures are thrown as `{ tag: '<kms-error case>', val: message }`,
// which componentize-js returns as the WIT result's error; anything else
// thrown is a trap (the host logs it).

import { get } from 'wasi:config/store@0.2.0-rc.1';
import { send, sendWithAuth } from 'kmsgate:provider/outbound-http@0.1.1';

// Vault's messages are passed on, cut to this many characters.
const MAX_MESSAGE = 200;

const fail = (tag, message) => {
  throw { tag, val: String(message).slice(0, 400) };
};

function settings() {
  const value = (name, fallback) => {
    let text;
    try {
      text = get(name);
    } catch {
      fail('invalid-config', 'settings unreadable');
    }
    text = (text ?? '').trim();
    return text === '' ? fallback : text;
  };
  const address = (value('address', '') || '').replace(/\/+$/, '');
  if (!/^https?:\/\//.test(address)) {
    fail('invalid-config', 'setting `address` must be http(s)://host:port');
  }
  const key = value('key', '');
  if (!/^[A-Za-z0-9_.-]+$/.test(key)) {
    fail('invalid-config', 'setting `key` must be A-Z a-z 0-9 _ . -');
  }
  return {
    address,
    key,
    mount: value('mount', 'transit').replace(/^\/+|\/+$/g, ''),
    auth: value('auth', undefined),
  };
}

function version(s, keyId) {
  const prefix = `${s.key}:v`;
  const rest = keyId.startsWith(prefix) ? keyId.slice(prefix.length) : '';
  if (!/^[0-9]+$/.test(rest)) {
    fail('unknown-key', `key id ${JSON.stringify(keyId.slice(0, 100))} is not ${prefix}<version>`);
  }
  return Number(rest);
}

function vaultErrors(body) {
  try {
    return (JSON.parse(new TextDecoder().decode(body)).errors ?? []).join('; ').slice(0, MAX_MESSAGE);
  } catch {
    return '';
  }
}

function statusError(status, body, endpoint) {
  const message = vaultErrors(body);
  const context = `${endpoint}: HTTP ${status}: ${message}`;
  const lowered = message.toLowerCase();
  if (status === 400 && endpoint === 'decrypt' && lowered.includes('ciphertext')) {
    fail('invalid-ciphertext', context);
  }
  if (status === 400 && endpoint === 'decrypt' && lowered.includes('message authentication failed')) {
    fail('invalid-ciphertext', context);
  }
  if (status === 404 || lowered.includes('encryption key not found')) fail('unknown-key', context);
  if (status === 401 || status === 403) fail('permission-denied', context);
  if (status === 429 || status >= 500) fail('unavailable', context);
  fail('internal', context);
}

function transportError(error, context) {
  const { tag, val } = error?.payload ?? error ?? {};
  switch (tag) {
    case 'denied':
      fail('permission-denied', `${context}: ${val}`);
    case 'unknown-secret':
    case 'invalid-request':
      fail('invalid-config', `${context}: ${val}`);
    case 'response-too-large':
      fail('internal', `${context}: answer over ${val} bytes`);
    case 'timeout':
      fail('unavailable', `${context}: timed out`);
    default:
      fail('unavailable', `${context}: ${val ?? 'connection failed'}`);
  }
}

// Sends a Transit request through the host: the JSON `data` of a 2xx
// answer, or a thrown kms-error.
function call(s, method, endpoint, body) {
  const request = {
    method,
    url: `${s.address}/v1/${s.mount}/${endpoint}/${s.key}`,
    headers: body === undefined ? [] : [['content-type', 'application/json']],
    secretHeaders: s.auth ? [] : [['x-vault-token', 'token']],
    body: body === undefined ? new Uint8Array() : new TextEncoder().encode(JSON.stringify(body)),
  };
  let response;
  try {
    response = s.auth ? sendWithAuth(s.auth, request) : send(request);
  } catch (error) {
    transportError(error, `${endpoint} ${s.key}`);
  }
  if (response.status >= 200 && response.status < 300) {
    try {
      return JSON.parse(new TextDecoder().decode(response.body)).data;
    } catch {
      fail('internal', "Vault's answer does not parse");
    }
  }
  statusError(response.status, response.body, endpoint);
}

const base64 = {
  encode: (bytes) => btoa(String.fromCharCode(...bytes)),
  decode: (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0)),
};

export const kms = {
  init() {
    settings();
  },

  status() {
    const s = settings();
    const data = call(s, 'get', 'keys');
    const latest = data?.latest_version;
    if (!Number.isInteger(latest) || latest < 1) {
      fail('internal', "Vault's key answer has no latest_version");
    }
    return { keyId: `${s.key}:v${latest}`, healthy: true, detail: `transit key ${s.key} at version ${latest}` };
  },

  encrypt(uid, keyId, plaintext) {
    const s = settings();
    if (plaintext.length === 0) fail('invalid-argument', 'empty plaintext');
    const v = version(s, keyId);
    const data = call(s, 'post', 'encrypt', { plaintext: base64.encode(plaintext), key_version: v });
    const ciphertext = data?.ciphertext ?? '';
    if (!ciphertext.startsWith(`vault:v${v}:`)) {
      fail('internal', 'Vault answered a ciphertext of another version');
    }
    return { ciphertext: new TextEncoder().encode(ciphertext), keyId, annotations: [] };
  },

  decrypt(uid, keyId, ciphertext, annotations) {
    const s = settings();
    const v = version(s, keyId);
    const text = new TextDecoder().decode(ciphertext);
    if (!/^[\x20-\x7e]*$/.test(text) || !text.startsWith(`vault:v${v}:`)) {
      fail('invalid-ciphertext', `not a Transit ciphertext of ${keyId.slice(0, 100)}`);
    }
    const data = call(s, 'post', 'decrypt', { ciphertext: text });
    try {
      return base64.decode(data.plaintext);
    } catch {
      fail('internal', 'Vault answered a plaintext that is not base64');
    }
  },
};
