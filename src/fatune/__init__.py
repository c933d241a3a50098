"""fatune: teach chat LLMs Persian.

Prepare Persian chat data, fine-tune with P-Tuning, QLoRA, LoRA or embedding training, chat with and
export the result, and measure Persian quality. Heavy libraries (torch, transformers) are imported
lazily, so ``import fatune`` and ``fatune --help`` stay fast.
"""

__version__ = "0.1.0"
