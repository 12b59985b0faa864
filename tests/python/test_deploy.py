"""The deployment artifacts agree with each other and with the daemon:
the static pod's probes hit the admin address the config serves, its socket
volume holds the configured socket, and the EncryptionConfiguration dials
that socket with KMS v2."""

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _load_yaml(path):
    return yaml.safe_load((REPO / path).read_text())


def test_static_pod_matches_the_config():
    config = tomllib.loads((REPO / "deploy/kmsgate.toml").read_text())
    pod = _load_yaml("deploy/static-pod.yaml")
    (container,) = pod["spec"]["containers"]
    host, port = config["admin"]["listen"].rsplit(":", 1)
    for probe, path in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")]:
        get = container[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (host, int(port), path), probe
    assert pod["spec"]["hostNetwork"] is True, "probes on 127.0.0.1 need the node's network"
    socket_dir = str(Path(config["socket"]).parent)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["socket"] == socket_dir and volumes["socket"]["hostPath"]["path"] == socket_dir
    # The compile cache is a directory kmsgate creates inside a volume of
    # its own, so it survives restarts: a node directory, because kubelet
    # makes an emptyDir writable by everyone and kmsgate refuses a cache
    # below such a directory.
    cache = Path(config["compile_cache_dir"])
    assert cache.parent == Path(mounts["compile-cache"])
    cache_volume = volumes["compile-cache"]
    assert "emptyDir" not in cache_volume
    assert cache_volume["hostPath"] == {"path": mounts["compile-cache"], "type": "Directory"}
    assert container["args"][:3] == ["serve", "--config", "/etc/kmsgate/kmsgate.toml"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_encryption_configuration_dials_the_socket_with_v2():
    config = tomllib.loads((REPO / "deploy/kmsgate.toml").read_text())
    encryption = _load_yaml("examples/encryption-configuration.yaml")
    assert encryption["kind"] == "EncryptionConfiguration"
    kms = encryption["resources"][0]["providers"][0]["kms"]
    assert kms["apiVersion"] == "v2"
    assert kms["endpoint"] == "unix://" + config["socket"]


def test_systemd_unit_reloads_with_sighup_and_owns_the_socket_directory():
    unit = (REPO / "deploy/kmsgate.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "RuntimeDirectory=kmsgate" in unit
    config = tomllib.loads((REPO / "deploy/kmsgate.toml").read_text())
    assert "CacheDirectory=kmsgate" in unit
    assert Path(config["compile_cache_dir"]).parent == Path("/var/cache/kmsgate")
    assert "--config /etc/kmsgate/kmsgate.toml" in unit


def _mib(quantity):
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


def test_the_stated_worst_case_fits_the_static_pods_memory_limit():
    """docs/security.md's formula, applied to the deployment config."""
    config = tomllib.loads((REPO / "deploy/kmsgate.toml").read_text())
    pod = _load_yaml("deploy/static-pod.yaml")
    (container,) = pod["spec"]["containers"]
    limit = _mib(container["resources"]["limits"]["memory"])
    process = 30
    total = process
    guest = 0
    for provider in config["providers"]:
        limits = provider.get("limits", {})
        concurrent = limits.get("max_concurrent_calls", 16)
        memory = limits.get("memory_mib", 64)
        response = provider.get("outbound", {}).get("max_response_bytes", 1 << 20) / (1 << 20)
        queued = provider.get("batch", {}).get("max_queued", 1024)
        guest += (concurrent + 2) * memory
        total += (concurrent + 2) * memory + concurrent * memory + concurrent * 4 * response
        total += queued * 34 / 1024
    socket = config.get("kms_socket", {})
    total += socket.get("max_connections", 16) * socket.get("max_streams", 64) * 84 / 1024
    total += config["admin"].get("max_connections", 64) * 16 / 1024
    assert guest <= config.get("memory_budget_mib", 4096)
    assert total <= limit, f"worst case {total:.0f} MiB over the pod's {limit} MiB"


def test_systemd_unit_leaves_room_for_every_connection_cap():
    unit = (REPO / "deploy/kmsgate.service").read_text()
    (line,) = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert int(line.split("=")[1]) >= 16 + 64 + 1024
