"""Generation presets. Every knob can be overridden by keyword (``max_new_tokens=64``, ``top_p=0.8``)."""

from __future__ import annotations

from fatune.errors import FatuneError

PRESETS: dict[str, dict] = {
    # Deterministic: what evaluation and the cached-vs-uncached checks use.
    "greedy": {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "max_new_tokens": 256},
    "sample": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "num_beams": 1, "repetition_penalty": 1.0,
               "max_new_tokens": 256},
    # The seed write-up's settings: beam search over 5 beams with a strong repetition penalty.
    "seed": {"do_sample": False, "num_beams": 5, "repetition_penalty": 1.5, "max_new_tokens": 256},
}


def generation_settings(preset: str = "greedy", **overrides) -> dict:
    """The preset's settings with ``overrides`` applied (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise FatuneError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    settings = dict(PRESETS[preset])
    settings.update({key: value for key, value in overrides.items() if value is not None})
    if not settings.get("do_sample"):
        for key in ("temperature", "top_p", "top_k"):  # meaningless without sampling; transformers warns
            settings.pop(key, None)
    return settings
