"""Hub detection goes through huggingface_hub's own HTTP client, so proxy settings count: a cluster that
reaches the Hub only through a proxy is online, an unreachable Hub is offline within the probe's timeout,
and ``HF_HUB_OFFLINE=1`` sends nothing.

A fake Hub and a plain-HTTP forward proxy run in threads on 127.0.0.1. The fake Hub's endpoint given to the
client is a closed port, so only the proxy (which forwards every request to the fake Hub) can answer it:
exactly a proxy-only cluster, where a direct connection to the Hub fails."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

import fatune.hub as hub

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy")


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connections are refused at once
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(handler) -> tuple[ThreadingHTTPServer, int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, server.server_address[1]


@pytest.fixture
def fake_hub():
    """A Hub stand-in: answers every HEAD with 200 and records the paths it saw."""
    seen = []

    class Hub(_Quiet):
        def do_HEAD(self):
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server, port = _serve(Hub)
    yield port, seen
    server.shutdown()
    server.server_close()


def _proxy(upstream_port: int, refuse: int | None = None):
    """A plain-HTTP forward proxy: takes absolute-URI requests, sends them to 127.0.0.1:``upstream_port``
    whatever host they name, and answers 502 when that fails (as real proxies do); with ``refuse``, answers
    that status to everything (407: it wants credentials)."""
    seen = []

    class Proxy(_Quiet):
        def do_HEAD(self):
            seen.append(self.path)
            if refuse is not None:
                status = refuse
            else:
                status = self._forward()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _forward(self) -> int:
            try:
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=2)
                upstream.request("HEAD", urlsplit(self.path).path or "/")
                status = upstream.getresponse().status
                upstream.close()
                return status
            except OSError:
                return 502

    server, port = _serve(Proxy)
    return server, port, seen


@pytest.fixture
def network(monkeypatch):
    """A clean slate for the probe: no proxy variables from the machine, no offline flag, fresh hub client and
    probe cache before and after (the client reads the proxy variables when it is created)."""
    from huggingface_hub.utils import close_session

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    close_session()
    hub.clear_probe_cache()
    yield monkeypatch
    monkeypatch.undo()  # the machine's own settings back first, then a client and cache made from them
    close_session()
    hub.clear_probe_cache()


def _use(monkeypatch, endpoint: str, proxy: str | None = None) -> None:
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    if proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "")  # some machines exempt 127.0.0.1; this test needs the proxy used


def test_the_hub_is_reachable_directly(network, fake_hub):
    port, seen = fake_hub
    _use(network, f"http://127.0.0.1:{port}")
    assert hub.hub_endpoint() == f"http://127.0.0.1:{port}"
    assert hub.hub_reachable() is True
    assert seen == ["/"]


def test_a_proxy_only_network_is_online(network, fake_hub):
    hub_port, hub_seen = fake_hub
    proxy, proxy_port, proxy_seen = _proxy(hub_port)
    endpoint = f"http://127.0.0.1:{_closed_port()}"  # direct connections are refused
    try:
        _use(network, endpoint)
        assert hub.hub_reachable() is False  # the reference: without the proxy the Hub is out of reach
        from huggingface_hub.utils import close_session

        _use(network, endpoint, proxy=f"http://127.0.0.1:{proxy_port}")
        close_session()  # as a new process would: the hub client reads the proxy variables when it is made
        assert hub.hub_reachable() is True
        assert proxy_seen == [endpoint + "/"] and hub_seen == ["/"]  # it went through the proxy to the Hub
        with hub.offline_unless_reachable():
            import huggingface_hub.constants as constants

            assert constants.HF_HUB_OFFLINE is False  # not forced offline
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("refuse", [None, 407], ids=["hub down behind it", "it wants credentials"])
def test_a_proxy_that_cannot_get_through_means_offline(network, refuse):
    proxy, proxy_port, proxy_seen = _proxy(_closed_port(), refuse)  # the proxy is up, the Hub behind it is not
    try:
        _use(network, "http://hub.example", proxy=f"http://127.0.0.1:{proxy_port}")
        assert hub.hub_reachable() is False and proxy_seen == ["http://hub.example/"]
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("through", ["nothing", "a dead proxy"])
def test_unreachable_is_offline_quickly(network, through):
    _use(network, f"http://127.0.0.1:{_closed_port()}",
          proxy=f"http://127.0.0.1:{_closed_port()}" if through == "a dead proxy" else None)
    started = time.perf_counter()
    assert hub.hub_reachable() is False
    assert time.perf_counter() - started < 2.0  # refused at once; no retries, no backoff
    import huggingface_hub.constants as constants

    with hub.offline_unless_reachable():
        assert constants.HF_HUB_OFFLINE is True  # the body runs offline: cached files only, no 25 s of retries
    assert constants.HF_HUB_OFFLINE is False  # and the flag is restored


def test_hf_hub_offline_sends_nothing(network):
    network.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)

    def no_probe(*args):
        raise AssertionError("probed the Hub although HF_HUB_OFFLINE=1")

    network.setattr(hub, "_probe", no_probe)
    assert hub.hub_reachable() is False
    with hub.offline_unless_reachable():
        import huggingface_hub.constants as constants

        assert constants.HF_HUB_OFFLINE is True


def test_the_probe_result_is_kept_per_endpoint(network, fake_hub):
    port, seen = fake_hub
    _use(network, f"http://127.0.0.1:{port}")
    assert hub.hub_reachable() and hub.hub_reachable() and seen == ["/"]  # probed once
    _use(network, f"http://127.0.0.1:{_closed_port()}")
    assert hub.hub_reachable() is False  # another endpoint is probed afresh
