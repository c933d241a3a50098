"""Generation: ``load(RUN_OR_MODEL)`` returns a ``ChatModel`` with ``.chat``, ``.stream`` and ``.generate``."""

from __future__ import annotations

from fatune.generation.engine import ChatModel
from fatune.generation.loading import Loaded
from fatune.generation.presets import PRESETS, generation_settings


def load(run_or_model: str, *, tokenizer: str | None = None, template: str | None = None, **kwargs) -> ChatModel:
    """Load a run dir, a base model or a PEFT adapter for chatting; see ``fatune.generation.loading``."""
    from fatune.generation.loading import load as load_artifact

    return ChatModel(load_artifact(str(run_or_model), tokenizer=tokenizer, template=template, **kwargs))


__all__ = ["PRESETS", "ChatModel", "Loaded", "generation_settings", "load"]
