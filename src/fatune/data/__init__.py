"""The Persian chat-data pipeline shared by training, generation and evaluation.

load_conversations -> (validate, normalize_persian) -> render -> truncate -> pack, plus split and cache
in ``prepare``. See each module's docstring for the rules it applies.
"""

from fatune.data.normalize import normalize_persian
from fatune.data.pack import pack
from fatune.data.render import (
           IGNORE,
           render,
           render_batch,
           render_prompt,
           trained_spans,
           truncate,
)
from fatune.data.records import LoadStats, sample_path
from fatune.data.sources import Conversation, load_conversations, parse_source
from fatune.data.templates import get_template

__all__ = ["IGNORE", "Conversation", "LoadStats", "get_template", "load_conversations", "normalize_persian",
           "pack", "parse_source", "render", "render_batch", "render_prompt", "sample_path", "trained_spans",
           "truncate"]
