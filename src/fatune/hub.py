"""Hugging Face Hub access that fails fast offline.

Without a network, huggingface_hub retries each request for about 25 s and prints a warning per try;
loading one tokenizer that way takes most of a minute before it fails. ``offline_unless_reachable``
probes the Hub once (a TCP connect, 3 s at most) and, when it cannot be reached, switches the hub
client to offline mode for the duration: files already in the local HF cache still load, anything
else fails at once, and the caller turns that into one clear sentence.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import urlparse


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the Hub (``$HF_ENDPOINT`` or huggingface.co)?"""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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
    if hub_constants.HF_HUB_OFFLINE or hub_reachable():
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
