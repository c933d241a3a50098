"""Loaded weights and running one batch on them: a base shared by several runs, or a model of its own.

``SharedBase`` is one copy of a base model serving every lora, qlora and ptuning run on it (and the base
itself, when it is served):

* LoRA/QLoRA adapters all go into one ``PeftModel`` (under internal names ``a0``, ``a1``...: PEFT keeps
  adapters in ``ModuleDict``s, whose keys cannot hold the dots a run's folder name may have); a batch
  activates its own with ``set_adapter``; the base runs inside ``disable_adapter()``.
* Chat-token rows (``method_config.chat_tokens``: PEFT trainable tokens on the embedding and the tied
  head). The single-model path merges them into the embedding for speed (``loading._merge_trainable_tokens``:
  unmerged, PEFT copies the whole embedding matrix on every forward), which on a shared base would hand one
  run's rows to every other. Here the active adapter's rows are merged when a batch switches to it and
  unmerged (PEFT writes the saved original rows back) before any other adapter, the base or a P-Tuning run
  runs. Decoding stays as fast as the single-model path, a switch costs one row copy, and each run computes
  exactly what ``fatune.load(run)`` computes (tests/integration/test_serve.py compares tokens and rows).
  All adapters load before any row is merged, so each one's saved originals are the base's rows.
* P-Tuning runs: the prompt encoder's output does not depend on the input, so its virtual token
  embeddings are computed once at load (before any LoRA layer is injected into the base) and batches run
  on the shared base with every adapter disabled (``ptuning_cache.generate_with_virtual``).

``Standalone`` wraps a ``ChatModel`` from ``fatune.generation.load`` (embed_head, full, a base no run
shares, a plain PEFT adapter). Both have a lock: two batches never run on one set of weights at once (the
batcher runs one worker per owner anyway; the lock keeps that true for any other caller).
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from pathlib import Path


class SharedBase:
    """One loaded base model and the adapters / prompt encoders of the runs that share it."""

    def __init__(self, model, precision: str, name: str):
        self.base = model  # the transformers model; LoRA layers are injected into it in place
        self.peft = None  # the PeftModel holding every LoRA/QLoRA adapter, once there is one
        self.precision, self.name = precision, name
        self.lock = threading.Lock()
        self._merged: str | None = None  # the adapter whose chat-token rows are in the embedding now
        self._adapters = 0

    def autocast(self):
        from fatune.generation.loading import bf16_autocast

        return bf16_autocast(self.base) if self.precision == "bf16" else nullcontext()

    def add_prompt_encoder(self, final: Path):
        """The run's virtual token embeddings, computed once as ``ChatModel`` computes them per batch."""
        import torch
        from peft import PeftModel

        from fatune.generation.ptuning_cache import virtual_token_embeddings
        from fatune.models import refuse_pickle_only

        if self.peft is not None:  # a prompt-learning wrapper around LoRA-injected layers would be a different model
            raise RuntimeError("load P-Tuning runs before LoRA adapters")
        refuse_pickle_only(final)  # an adapter_model.bin alone is refused unless --allow-pickle
        wrapper = PeftModel.from_pretrained(self.base, str(final), is_trainable=False).eval()
        with torch.no_grad(), self.autocast():
            return virtual_token_embeddings(wrapper).detach().clone()

    def add_adapter(self, final: Path) -> str:
        from peft import PeftModel

        from fatune.hub import offline_unless_reachable
        from fatune.models import refuse_pickle_only

        refuse_pickle_only(final)  # an adapter_model.bin alone is refused unless --allow-pickle
        name = f"a{self._adapters}"
        self._adapters += 1
        with offline_unless_reachable():
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(final), adapter_name=name, is_trainable=False)
            else:  # every adapter loads before any chat-token row is merged: their saved originals are the base's
                self.peft.load_adapter(str(final), adapter_name=name, is_trainable=False)
        self.peft.eval()
        for param in self.peft.parameters():
            param.requires_grad_(False)
        return name

    def _token_layers(self) -> list:
        return [m for m in self.peft.modules() if type(m).__name__ == "TrainableTokensLayer"]

    def _use(self, adapter: str | None) -> None:
        """Make ``adapter``'s chat-token rows (none for None: the base) the ones in the embedding."""
        if self.peft is None or adapter == self._merged:
            return
        layers = self._token_layers()  # the embedding's and the tied head's
        for layer in layers:
            if layer.merged:
                layer.unmerge()
        if adapter is not None:
            self.peft.set_adapter(adapter)
            for layer in layers:
                if adapter in layer.token_indices:
                    layer.merge(adapter_names=[adapter])
        self._merged = adapter

    def generate(self, adapter: str | None, virtual, ids, mask, **settings):
        import torch

        from fatune.generation.ptuning_cache import generate_with_virtual

        with self.lock, torch.no_grad(), self.autocast():
            self._use(adapter if virtual is None else None)
            if adapter is not None and virtual is None:
                return self.peft.generate(input_ids=ids, attention_mask=mask, use_cache=True, **settings)
            with self.peft.disable_adapter() if self.peft is not None else nullcontext():
                if virtual is not None:
                    return generate_with_virtual(self.base, virtual, ids, mask, **settings)
                return self.base.generate(input_ids=ids, attention_mask=mask, use_cache=True, **settings)


class Standalone:
    """A model with weights of its own (embed_head, full, a base no run shares, a plain PEFT adapter)."""

    def __init__(self, chat, name: str):
        self.chat, self.name = chat, name
        self.lock = threading.Lock()

    def generate(self, adapter, virtual, ids, mask, **settings):
        import torch

        from fatune.generation.ptuning_cache import generate_ptuning_cached

        with self.lock, torch.no_grad(), self.chat.loaded.autocast():
            if self.chat.loaded.is_prompt_learning:
                return generate_ptuning_cached(self.chat.model, ids, mask, **settings)
            return self.chat.model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **settings)
