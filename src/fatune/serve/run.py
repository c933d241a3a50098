"""``fatune serve``: load the targets, then answer on http://HOST:PORT until interrupted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from fatune.serve.registry import parse_targets
from fatune.serve.schema import Limits

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(targets: Sequence[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          votes: str | Path | None = "votes.jsonl", limits: Limits = Limits(), max_batch: int = 8,
          queue_limit: int = 32, log_level: str = "info") -> None:
    """Serve ``targets`` (runs, base models, adapters; ``NAME=PATH_OR_ID`` names one) with an
    OpenAI-compatible API, the chat and arena pages, and votes appended to ``votes``."""
    import uvicorn

    from fatune.serve.app import create_app
    from fatune.serve.registry import build_registry

    parse_targets(targets)  # bad ids fail before anything loads
    if max_batch < 1 or queue_limit < 1:
        from fatune.errors import FatuneError

        raise FatuneError("--max-batch and --queue-limit must be at least 1")
    registry = build_registry(targets)
    app = create_app(registry, api_key=api_key, votes_path=votes, limits=limits, max_batch=max_batch,
                     queue_limit=queue_limit)
    for line in registry.describe():
        print(f"fatune: serving {line}")
    if votes is not None:
        print(f"fatune: arena votes go to {Path(votes).resolve()}")
    shown = f"[{host}]" if ":" in host else host
    print(f"fatune: open http://{shown}:{port}/ (chat), /arena; the OpenAI API is at http://{shown}:{port}/v1"
          + (" (with the API key)" if api_key else ""), flush=True)
    if host not in LOOPBACK and not api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this machine can use the models", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
