"""``fatune serve``: an OpenAI-compatible chat server for every kind of fatune run, with chat and arena pages.

``serve(targets)`` loads the runs and models (runs on one base share its weights: ``serve.registry``),
batches concurrent requests per model (``serve.batching``) and answers ``/v1/chat/completions``,
``/v1/models`` and the arena's routes (``serve.app``). Needs the ``serve`` extra (fastapi, uvicorn).
"""

from __future__ import annotations

from fatune.serve.run import serve
from fatune.serve.schema import Limits

__all__ = ["Limits", "serve"]
