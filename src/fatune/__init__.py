"""fatune: teach chat LLMs Persian.

Prepare Persian chat data, fine-tune with P-Tuning, QLoRA, LoRA or embedding training, chat with and
export the result, and measure Persian quality. Heavy libraries (torch, transformers) are imported
lazily, so ``import fatune`` and ``fatune --help`` stay fast.
"""

__version__ = "0.1.0"


def train(config, overwrite: bool = False):
    """Train a config (a ``fatune.config.Config``, or a YAML path) into its ``output.dir``; see ``fatune.training``."""
    from fatune.config import Config, load_config
    from fatune.models import pickle_allowed
    from fatune.training import train as run

    config = config if isinstance(config, Config) else load_config(config)
    with pickle_allowed(config.model.allow_pickle):  # a model directory with pickle weights only loads if asked
        return run(config, overwrite=overwrite)


def load(run_or_model, **kwargs):
    """Load a run dir, base model or PEFT adapter for chat: ``fatune.load(RUN).chat(messages)``."""
    from fatune.generation import load as load_chat_model

    return load_chat_model(run_or_model, **kwargs)
