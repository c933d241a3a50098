"""Hugging Face Hub access that fails fast offline.

Without a network, huggingface_hub retries each request for about 25 s and prints a warning per try;
loading one tokenizer that way takes most of a minute before it fails. ``offline_unless_reachable``
probes the Hub once and, when it cannot be reached, switches the hub client to offline mode for the
duration: files already in the local HF cache still load, anything else fails at once, and the caller
turns that into one clear sentence.

The probe is one ``HEAD`` of the Hub endpoint through huggingface_hub's own HTTP client (``get_session``),
3 s at most, no retries. It therefore goes the way every later Hub request goes: through ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``NO_PROXY``, a client factory the user installed (``set_client_factory``), and
``HF_ENDPOINT``. A raw TCP connect to port 443 (what this module did before) fails on clusters that reach
the internet only through a proxy, and forced them offline although every download would have worked.
``HF_HUB_OFFLINE=1`` is honoured: no probe is sent at all.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from functools import lru_cache

log = logging.getLogger(__name__)

# A proxy's answers when a request did not get through: it needs credentials the client lacks (407), or it
# cannot reach the Hub itself (the gateway errors).
_NOT_THROUGH = (407, 502, 503, 504)
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                    "NO_PROXY", "no_proxy")


def hub_endpoint() -> str:
    """The Hub URL huggingface_hub talks to: ``$HF_ENDPOINT`` (read now, so a change after import counts) or its
    own default."""
    import huggingface_hub.constants as hub_constants

    return (os.environ.get("HF_ENDPOINT") or hub_constants.ENDPOINT).rstrip("/")


def hub_offline_flag() -> bool:
    """Has the user put the hub client in offline mode (``HF_HUB_OFFLINE=1``)?"""
    import huggingface_hub.constants as hub_constants

    return bool(hub_constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Does the Hub (``hub_endpoint()``) answer a request sent the way huggingface_hub sends its own?

    False in offline mode (without sending anything), on a network error or timeout, and on a proxy's refusal
    (407) or gateway error (502/503/504: the proxy is up, the Hub is not). Any other HTTP answer, a 401 or 404
    included, means requests get through. Cached per endpoint and proxy settings for the life of the process."""
    if hub_offline_flag():
        return False
    settings = tuple(os.environ.get(name) for name in _PROXY_VARIABLES)
    return _probe(hub_endpoint(), settings, timeout)


@lru_cache(maxsize=8)
def _probe(endpoint: str, proxy_settings: tuple, timeout: float) -> bool:
    # proxy_settings is only part of the cache key: the session reads the variables itself.
    from huggingface_hub.utils import get_session

    try:
        response = get_session().head(endpoint + "/", timeout=timeout)
    except Exception as error:  # connection refused, DNS, timeout, proxy refused, TLS: all mean "not from here"
        log.debug("the Hub (%s) is not reachable: %s", endpoint, first_line(error))
        return False
    return response.status_code not in _NOT_THROUGH


def clear_probe_cache() -> None:
    """Forget earlier probe results (tests; a long-lived process whose network changed)."""
    _probe.cache_clear()


@contextmanager
def offline_unless_reachable():
    """Run the body in hub offline mode when the Hub cannot be reached (see the module docstring)."""
    import huggingface_hub.constants as hub_constants

    modules = [hub_constants]
    try:
        import datasets.config  # datasets keeps its own copy of the flag

        modules.append(datasets.config)
    except ImportError:
        pass
    if hub_offline_flag() or hub_reachable():
        yield
        return
    saved = [module.HF_HUB_OFFLINE for module in modules]
    for module in modules:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in zip(modules, saved):
            module.HF_HUB_OFFLINE = value


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-sentence errors."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
