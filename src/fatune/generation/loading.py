"""Resolve what the user points at (RUN_OR_MODEL) into a model, tokenizer, template and normalization.

RUN_OR_MODEL can be:

* a fatune run dir (or its ``final/``): ``final/fatune.json`` says the base model, the method, the
  template, the normalization and the precision used in training, so chat sees exactly the training
  format and computes as training did (a bf16 run: bf16 base, forward under bf16 autocast; runs that
  do not record a precision load in fp32, as before);
* a base model: hub id, local dir or ``pypi:`` alias (the "before tuning" baseline);
* a PEFT adapter dir or hub id (e.g. the seed's ``AliHamzeh/gemma2-2b-it-persian-p-tuned``): the base comes
  from ``adapter_config.json``. ``tokenizer`` and ``template`` override what the artifact says; the seed's
  adapters need ``philschmid/gemma-tokenizer-chatml`` and ``chatml``.

Finding a run's artifact and reading its ``fatune.json`` is ``fatune.artifact``'s; this module turns
what it says into a loaded model.
"""

from __future__ import annotations

import functools
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from fatune.artifact import find_artifact, tokenizer_dir
from fatune.errors import FatuneError
from fatune.hub import first_line, offline_unless_reachable


@dataclass
class Loaded:
    model: object
    tokenizer: object
    template: str
    normalize: bool = False
    digits: str | None = None
    method: str | None = None
    meta: dict = field(default_factory=dict)
    precision: str = "fp32"  # how the model computes: bf16 = bf16 mixed precision, as a bf16 run trained

    @property
    def is_prompt_learning(self) -> bool:
        config = getattr(self.model, "active_peft_config", None)
        return bool(config is not None and config.is_prompt_learning)

    def autocast(self):
        """The context generation runs in: bf16 autocast for a bf16 run (as the HF Trainer ran its forward)."""
        return bf16_autocast(self.model) if self.precision == "bf16" else nullcontext()


def bf16_autocast(model):
    import torch

    return torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)


def _forward_inbf16_autocast(module) -> None:
    """Make every call of ``module`` (evaluation's loss, a user's own forward) compute under bf16 autocast,
    not only generation: a bf16 run's model mixes bf16 and fp32 weights and computes as trained only there."""
    forward = module.forward

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with bf16_autocast(module):  # a new context per call: autocast state is per thread (streaming generates in one)
            return forward(*args, **kwargs)

    module.forward = run


def _as_saved(model, final: Path) -> None:
    """Give each weight the dtype it was saved in. A bf16 run saves frozen weights in bf16 and trained ones
    in fp32 (embed_head's matrix); the model was loaded in fp32, which holds bf16 values exactly."""
    import torch
    from safetensors import safe_open

    params = dict(model.named_parameters())
    for file in sorted(final.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():
                if name in params and handle.get_slice(name).get_dtype() == "BF16":
                    params[name].data = params[name].data.to(torch.bfloat16)  # in place: tied weights stay tied


def _merge_trainable_tokens(model) -> None:
    """Write a LoRA run's trained chat-token rows (``method.chat_tokens``) into the embedding for inference.
    Unmerged, PEFT rebuilds a copy of the whole 262k-row matrix on every forward, for the embedding and the
    tied head: each generated token then costs two weight copies (a 3x slower decode, measured). The LoRA
    matrices stay separate, so the adapter is used as trained."""
    for module in model.modules():
        if type(module).__name__ == "TrainableTokensLayer" and not module.merged:  # tied head too: both skip the copy
            module.merge()


def _precision(meta: dict, dtype, precision: str | None = None) -> str:
    """How the loaded model computes: as a bf16 run trained, unless the caller chose a dtype or a precision
    (a base model evaluated beside bf16 runs computes as they do). fp16 runs (GPU configs) and runs that
    record no precision load in fp32."""
    import torch

    if precision is not None:
        if precision not in ("fp32", "bf16"):
            raise FatuneError(f"precision: {precision!r} is not fp32 or bf16")
        return precision
    if dtype is not None:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return "bf16" if meta.get("precision") == "bf16" else "fp32"


def adapter_config(name: str) -> dict | None:
    """``adapter_config.json`` of a local dir or hub repo, or None when ``name`` is not a PEFT adapter."""
    path = Path(name).expanduser()
    if path.is_dir():
        file = path / "adapter_config.json"
        return json.loads(file.read_text()) if file.exists() else None
    if name.startswith("pypi:") or path.exists() or name.count("/") != 1:
        return None
    from huggingface_hub import hf_hub_download

    try:
        with offline_unless_reachable():
            return json.loads(Path(hf_hub_download(name, "adapter_config.json")).read_text())
    except Exception:  # not an adapter repo, or offline: treat it as a model id and let loading explain
        return None


def method_config(meta: dict):
    """The run's method settings (its 4-bit quantization included); qlora defaults for older artifacts."""
    from fatune.config import MethodConfig

    return MethodConfig(**meta.get("method_config", {"name": "qlora"}))


def load(run_or_model: str, *, tokenizer: str | None = None, template: str | None = None,
         dtype=None, load_in_4bit: bool | None = None, precision: str | None = None) -> Loaded:
    """Load RUN_OR_MODEL for generation (see the module docstring). ``precision`` (fp32 | bf16) overrides
    the run's recorded one; bf16 is a bf16 base with the forward under bf16 autocast."""
    from fatune.models import load_model, load_tokenizer, refuse_pickle_only

    path = Path(run_or_model).expanduser()
    if run_or_model.startswith(("/", ".", "~")) and not path.exists():
        raise FatuneError(f"{run_or_model}: no such run or model directory")
    final, meta = find_artifact(path)
    adapter = adapter_config(str(final or run_or_model))
    if meta:
        base_name = meta["base_model"]
        tokenizer_name = tokenizer or str(tokenizer_dir(final))  # the run saved its tokenizer
        template = template or meta["template"]
        load_in_4bit = meta.get("load_in_4bit") if load_in_4bit is None else load_in_4bit
    elif adapter:
        base_name = adapter.get("base_model_name_or_path") or ""
        if not base_name:
            raise FatuneError(f"{run_or_model}: adapter_config.json names no base model")
        tokenizer_name = tokenizer or base_name
    else:
        base_name, tokenizer_name = run_or_model, tokenizer or run_or_model
    template = template or "auto"
    tok = load_tokenizer(tokenizer_name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token

    precision = _precision(meta, dtype, precision)
    as_trained = dtype is None and precision == "bf16"  # a bf16 run, its dtypes not overridden
    if as_trained:
        import torch

        dtype = torch.bfloat16  # the frozen base as training stored it
    quantization = None
    if load_in_4bit:
        from fatune.methods.qlora import keep_training_layout, quantization_config

        quantization = quantization_config(method_config(meta))
    if meta and meta.get("method") in ("embed_head", "full"):
        if as_trained:  # the saved model's own mix of dtypes, not one dtype for all
            model = load_model(str(final))
            _as_saved(model, final)
        else:
            model = load_model(str(final), dtype=dtype)
    else:
        model = load_model(base_name, dtype=dtype, quantization_config=quantization)
        if quantization is not None:
            keep_training_layout(model)  # generate with the exact 4-bit layout the adapter was trained on
        if adapter or (meta and meta.get("method") in ("ptuning", "lora", "qlora")):
            from peft import PeftModel

            source = str(final) if final else run_or_model
            refuse_pickle_only(source)  # an adapter_model.bin alone is refused unless --allow-pickle
            try:
                with offline_unless_reachable():
                    model = PeftModel.from_pretrained(model, source, is_trainable=False)
            except OSError as error:
                raise FatuneError(f"{source}: could not load the adapter ({first_line(error)})") from None
            _merge_trainable_tokens(model)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if precision == "bf16":
        _forward_inbf16_autocast(model)
    return Loaded(model, tok, template, bool(meta.get("normalize", False)), meta.get("digits"),
                  meta.get("method") or ("adapter" if adapter else None), meta, precision)
