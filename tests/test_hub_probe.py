"""The hub reachability probe honours HF_ENDPOINT, the proxy variables and offline mode; a local HTTP server
stands in for the hub and for a proxy (no internet)."""
from __future__ import annotations

import http.server
import socket
import threading

import pytest

from vlprompt.backbones import hub

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every HEAD with 200 and records the request line (a proxy sees the absolute URL)."""

    seen: list[str]

    def do_HEAD(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(404 if self.path.endswith("/missing") else 200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_probe_asks_hf_endpoint(server, monkeypatch):
    url, seen = server
    monkeypatch.setenv("HF_ENDPOINT", url + "/")
    assert hub.hub_endpoint() == url
    assert hub.hub_reachable(timeout=5)
    assert seen == ["HEAD /"]


def test_an_http_error_status_still_means_reachable(server, monkeypatch):
    url, seen = server
    monkeypatch.setenv("HF_ENDPOINT", url + "/missing")
    assert hub.hub_reachable(timeout=5)
    assert seen == ["HEAD /missing"]


def test_nothing_listening_is_unreachable(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub.hub_reachable(timeout=5)


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_sends_no_request(server, monkeypatch, variable):
    url, seen = server
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv(variable, "1")
    assert not hub.hub_reachable(timeout=5)
    assert seen == []


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_probe_goes_through_the_proxy_and_no_proxy_bypasses_it(server, monkeypatch, variable):
    proxy, seen = server
    # An endpoint this machine cannot reach directly (the .invalid TLD never resolves): only the proxy can.
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    monkeypatch.setenv(variable, proxy)
    assert hub.hub_reachable(timeout=5)
    assert seen == ["HEAD http://hub.invalid"]
    monkeypatch.setenv("NO_PROXY", "hub.invalid")
    assert not hub.hub_reachable(timeout=5)
    assert seen == ["HEAD http://hub.invalid"]


def test_the_default_endpoint_is_huggingface():
    assert hub.hub_endpoint() == "https://huggingface.co"
