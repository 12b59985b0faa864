"""The admin HTTP server, read by independent clients: /metrics parsed with
the Prometheus project's own OpenMetrics parser (prometheus_client), counters
moving with traffic, and the probes and providers view."""

import hashlib
import json
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from test_grpc_client import _call, _encrypt


def _get(daemon, path):
    try:
        with urllib.request.urlopen(f"{daemon.admin}{path}", timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def _scrape(daemon):
    status, headers, text = _get(daemon, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    # Raises on anything that is not valid OpenMetrics.
    return {family.name: family for family in text_string_to_metric_families(text)}


def _requests(families, method, code="Ok"):
    return sum(
        sample.value
        for sample in families["kmsgate_requests"].samples
        if sample.name == "kmsgate_requests_total"
        and sample.labels["api"] == "v2"
        and sample.labels["method"] == method
        and sample.labels["code"] == code
    )


def test_metrics_parse_and_counters_move_with_traffic(daemon, v2, v2_client):
    before = _scrape(daemon)
    for _ in range(5):
        _encrypt(v2, v2_client, b"metrics-dek")
    _call(v2_client.Status, v2.StatusRequest())
    after = _scrape(daemon)

    assert _requests(after, "encrypt") - _requests(before, "encrypt") == 5
    assert _requests(after, "status") > _requests(before, "status")

    latency = after["kmsgate_request_duration_seconds"]
    assert latency.type == "histogram"
    counts = [
        s.value
        for s in latency.samples
        if s.name.endswith("_count") and s.labels["api"] == "v2" and s.labels["method"] == "encrypt"
    ]
    assert len(counts) == 1 and counts[0] >= 5

    healthy = after["kmsgate_provider_healthy"].samples
    assert [(s.labels["provider"], s.value) for s in healthy] == [("local", 1.0)]
    info = after["kmsgate_provider_info"].samples[0].labels
    assert len(info["sha256"]) == 64 and len(info["key_id_hash"]) == 16
    assert "local/k1" not in json.dumps([s.labels for s in after["kmsgate_provider_info"].samples])
    assert "kmsgate_build_info" in after


def test_failures_are_counted_by_code(daemon, v2, v2_client):
    before = _requests(_scrape(daemon), "encrypt", "InvalidArgument")
    try:
        v2_client.Encrypt(v2.EncryptRequest(plaintext=b"", uid="empty"), timeout=10)
    except Exception:  # noqa: BLE001 - the code is checked through the metric
        pass
    assert _requests(_scrape(daemon), "encrypt", "InvalidArgument") == before + 1


def test_probes_and_providers_view(daemon):
    assert _get(daemon, "/livez")[0] == 200
    assert _get(daemon, "/readyz")[0] == 200
    status, _, body = _get(daemon, "/providers")
    assert status == 200
    view = json.loads(body)
    (provider,) = view["providers"]
    assert provider["name"] == "local" and provider["primary"]
    # Key ids only as hashes (the port needs no credentials), as in /metrics.
    assert "key_id" not in provider and "local/k1" not in body
    expected = hashlib.sha256(b"local/k1").hexdigest()[:16]
    assert provider["key_id_hash"] == expected
    assert len(provider["sha256"]) == 64
    # Mutating endpoints are off by default.
    request = urllib.request.Request(f"{daemon.admin}/reload", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("POST /reload should not be served by default")
    except urllib.error.HTTPError as error:
        assert error.code in (404, 405)
