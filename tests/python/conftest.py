"""Fixtures for the independent-client tests: Python stubs generated from the
in-tree protos, and a real `kmsgate serve` on a throwaway Unix socket.

Nothing here uses kmsgate's Rust client; the only shared artefacts are the
`.proto` files, which are copies of the upstream Kubernetes KMS protos.
"""

import base64
import importlib
import json
import os
import signal
import socket as socketlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "crates" / "proto" / "proto"
DAEMON = REPO / "target" / "release" / "kmsgate"
COMPONENT = REPO / "target" / "wasm32-wasip2" / "release" / "local_aes.wasm"
BUILD_HINT = "run scripts/test (it builds the daemon and providers)"

# tonic/hyper reject a request whose :authority is a socket path, which is
# what grpcio sends for a `unix:` target unless told otherwise.
CHANNEL_OPTIONS = [("grpc.default_authority", "localhost")]
CALL_TIMEOUT_S = 10
READY_DEADLINE_S = 30
EXIT_DEADLINE_S = 30


@dataclass
class Api:
    """The generated message module and client stub class of one API."""

    pb2: object
    stub: type


@dataclass
class Daemon:
    socket: Path
    stderr: Path
    # http://127.0.0.1:PORT of the admin HTTP server.
    admin: str


@pytest.fixture(scope="session")
def protos(tmp_path_factory):
    """Compiles both protos with grpc_tools and imports them as the packages
    `v2` and `v1beta1`, so the two `api_pb2` modules cannot clash."""
    out = tmp_path_factory.mktemp("stubs")
    files = ["v2/api.proto", "v1beta1/api.proto"]
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
    )
    assert status == 0, f"protoc failed on {files} under {PROTO_ROOT}"
    for package in ("v2", "v1beta1"):
        (out / package / "__init__.py").touch()
    # The generated `*_pb2_grpc.py` import `from v2 import api_pb2`, so the
    # output directory itself has to be on the path.
    sys.path.insert(0, str(out))
    try:
        return {
            package: Api(
                pb2=importlib.import_module(f"{package}.api_pb2"),
                stub=importlib.import_module(f"{package}.api_pb2_grpc").KeyManagementServiceStub,
            )
            for package in ("v2", "v1beta1")
        }
    finally:
        sys.path.remove(str(out))


def _require_built(path: Path) -> None:
    if not path.is_file():
        pytest.fail(f"{path} is missing: {BUILD_HINT}", pytrace=False)


def _free_port() -> int:
    with socketlib.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_config(workdir: Path, admin_port: int) -> Path:
    key = workdir / "key.b64"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    # JSON string literals are valid TOML basic strings.
    config = workdir / "kmsgate.toml"
    config.write_text(
        f"""\
socket = {json.dumps(str(workdir / "kms.sock"))}
status_interval_ms = 500

[admin]
listen = "127.0.0.1:{admin_port}"

[[providers]]
name = "local"
component = {json.dumps(str(COMPONENT))}

[providers.settings]
key-id = "k1"
key = {{ file = {json.dumps(str(key))} }}
"""
    )
    return config


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no stderr file)"


def _wait_ready(process: subprocess.Popen, daemon: Daemon, protos) -> None:
    """Polls v2 Status until it reports healthy, the daemon dies, or the
    deadline passes."""
    api = protos["v2"]
    deadline = time.monotonic() + READY_DEADLINE_S
    last = "socket not created yet"
    with grpc.insecure_channel(f"unix:{daemon.socket}", options=CHANNEL_OPTIONS) as channel:
        stub = api.stub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(
                    f"kmsgate exited with {process.returncode} before it was ready:\n"
                    f"{_tail(daemon.stderr)}",
                    pytrace=False,
                )
            if daemon.socket.exists():
                try:
                    status = stub.Status(api.pb2.StatusRequest(), timeout=1)
                    if status.healthz == "ok":
                        return
                    last = f"healthz {status.healthz!r}"
                except grpc.RpcError as error:
                    last = f"{error.code()}: {error.details()}"
            time.sleep(0.05)
    pytest.fail(
        f"kmsgate not ready after {READY_DEADLINE_S}s ({last}):\n{_tail(daemon.stderr)}",
        pytrace=False,
    )


def _stop(process: subprocess.Popen, daemon: Daemon) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=EXIT_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(
            f"kmsgate ignored SIGTERM for {EXIT_DEADLINE_S}s:\n{_tail(daemon.stderr)}",
            pytrace=False,
        )
    assert code == 0, f"kmsgate exited with {code} after SIGTERM:\n{_tail(daemon.stderr)}"
    assert not daemon.socket.exists(), f"{daemon.socket} left behind after exit"


@pytest.fixture(scope="session")
def daemon(tmp_path_factory, protos):
    """A `kmsgate serve` with one local-aes provider ("local", key id "k1"),
    healthy before the first test; stopped with SIGTERM afterwards, which
    must exit 0 and remove the socket."""
    _require_built(DAEMON)
    _require_built(COMPONENT)
    workdir = tmp_path_factory.mktemp("kmsgate")
    admin_port = _free_port()
    config = _write_config(workdir, admin_port)
    running = Daemon(
        socket=workdir / "kms.sock",
        stderr=workdir / "stderr.log",
        admin=f"http://127.0.0.1:{admin_port}",
    )
    with running.stderr.open("wb") as stderr:
        process = subprocess.Popen(
            [str(DAEMON), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    try:
        _wait_ready(process, running, protos)
    except BaseException:
        process.kill()
        process.wait()
        raise
    yield running
    _stop(process, running)


@pytest.fixture(scope="session")
def channel(daemon):
    with grpc.insecure_channel(f"unix:{daemon.socket}", options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(scope="session")
def v2(protos):
    return protos["v2"].pb2


@pytest.fixture(scope="session")
def v1beta1(protos):
    return protos["v1beta1"].pb2


@pytest.fixture(scope="session")
def v2_client(protos, channel):
    return protos["v2"].stub(channel)


@pytest.fixture(scope="session")
def v1beta1_client(protos, channel):
    return protos["v1beta1"].stub(channel)
