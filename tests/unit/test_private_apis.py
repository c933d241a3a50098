"""Every private or internal API of another library that fatune relies on, checked in one place.

fatune overrides Trainer helpers, registers attention and mask functions under transformers' keyword names,
reaches into PEFT's trainable-token layers, flips a bitsandbytes attribute, scores sacrebleu from sufficient
statistics and flips huggingface_hub's offline flag. None of that is a stable API: an upgrade may rename or
re-sign it, and the failure would then surface far away (a silent non-atomic checkpoint, a mask that
ignores packing, a 4-bit layer that stops training). Each test here names the thing and the fatune module
that uses it, so a failure after ``pip install -U`` reads as "transformers changed X, used by Y".

Checks are by signature (``inspect.signature``: the parameter names fatune passes), by attribute on a real
tiny instance, by behaviour against a reference computation, and, only where nothing else can tell, by the
caller's source (does the Trainer still call the method fatune overrides?)."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

# (where, attribute, parameter names fatune passes or receives, the fatune module that relies on it)
SIGNATURES = [
    ("transformers.Trainer", "_save_checkpoint", ["model", "trial"], "fatune.training.trainer (atomic step-N)"),
    ("transformers.Trainer", "_save_optimizer_and_scheduler", ["output_dir"], "fatune.training.trainer"),
    ("transformers.Trainer", "_save_scaler", ["output_dir"], "fatune.training.trainer"),
    ("transformers.Trainer", "_save_rng_state", ["output_dir"], "fatune.training.trainer"),
    ("transformers.Trainer", "save_model", ["output_dir", "_internal_call"], "fatune.training.trainer"),
    ("transformers.Trainer", "store_flos", [], "fatune.training.trainer"),
    ("transformers.Trainer", "create_accelerator_and_postprocess", [], "fatune.training.trainer (fp16 on CPU)"),
    ("transformers.Trainer", "compute_loss", ["model", "inputs", "return_outputs", "num_items_in_batch"],
     "fatune.training.trainer (fused head)"),
    ("transformers.Trainer", "training_step", ["model", "inputs", "num_items_in_batch"],
     "fatune.training.trainer (non-finite loss guard)"),
    ("transformers.Trainer", "_load_from_checkpoint", ["resume_from_checkpoint", "model"],
     "fatune.training.integrity (checks what it will read)"),
    ("transformers.Trainer", "remove_callback", ["callback"], "fatune.training.run (own progress bar)"),
    ("transformers.Trainer", "add_callback", ["callback"], "fatune.training.run"),
    ("transformers.masking_utils", "sdpa_mask", ["attention_mask", "q_length", "kv_length", "q_offset", "kv_offset"],
     "fatune.attention.varlen_mask (delegates with these keywords)"),
    ("transformers.masking_utils.AttentionMaskInterface", "register", ["key", "value"],
     "fatune.attention.register"),
    ("transformers.AttentionInterface", "register", ["key", "value"], "fatune.attention.register"),
    ("transformers.PreTrainedModel", "set_attn_implementation", ["attn_implementation"],
     "fatune.bench and tests (fatune_varlen on a built model)"),
    ("peft.PeftModel", "from_pretrained", ["model", "model_id", "adapter_name", "is_trainable"],
     "fatune.generation.loading, fatune.serve.weights"),
    ("peft.PeftModel", "load_adapter", ["model_id", "adapter_name", "is_trainable"], "fatune.serve.weights"),
    ("peft.PeftModel", "set_adapter", ["adapter_name"], "fatune.serve.weights"),
    ("peft.PeftModel", "get_prompt", ["batch_size"], "fatune.generation.ptuning_cache (cached P-Tuning)"),
    ("peft.tuners.trainable_tokens.layer.TrainableTokensLayer", "get_merged_weights", ["active_adapters"],
     "fatune.training.head.output_weight"),
    ("peft.tuners.trainable_tokens.layer.TrainableTokensLayer", "merge", ["adapter_names"],
     "fatune.generation.loading._merge_trainable_tokens, fatune.serve.weights"),
    ("peft.tuners.trainable_tokens.layer.TrainableTokensLayer", "unmerge", [], "fatune.serve.weights"),
    ("huggingface_hub.utils", "close_session", [], "tests/unit/test_hub.py (a proxy change needs a new client)"),
]


def _resolve(path: str):
    """``a.b.C`` -> the object: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("where, name, params, user", SIGNATURES, ids=[f"{w.split('.')[-1]}.{n}" for w, n, _, _ in
                                                                      SIGNATURES])
def test_signature(where, name, params, user):
    owner = _resolve(where)
    assert hasattr(owner, name), f"{where}.{name} is gone; {user} relies on it"
    signature = inspect.signature(getattr(owner, name))
    missing = [p for p in params if p not in signature.parameters]
    assert not missing, f"{where}.{name}{signature} no longer takes {missing}; {user} passes them"


# --- transformers ------------------------------------------------------------------------------------------


def test_trainer_still_calls_the_save_method_fatune_overrides():
    """FatuneTrainer makes checkpoints atomic by overriding ``_save_checkpoint``: if the Trainer stopped
    calling it, checkpoints would be written in place again, silently."""
    from transformers import Trainer

    source = inspect.getsource(Trainer._maybe_log_save_evaluate)
    assert "self._save_checkpoint(" in source, (
        "Trainer._maybe_log_save_evaluate no longer calls self._save_checkpoint; fatune.training.trainer's "
        "atomic checkpoints would be bypassed")


def test_trainer_checkpoint_file_names():
    """fatune.training.integrity checks these files before a resume; fatune.training.run reads the state."""
    import transformers.trainer as trainer

    names = {name: getattr(trainer, name, None) for name in ("TRAINER_STATE_NAME", "OPTIMIZER_NAME", "SCHEDULER_NAME")}
    assert names == {"TRAINER_STATE_NAME": "trainer_state.json", "OPTIMIZER_NAME": "optimizer.pt",
                     "SCHEDULER_NAME": "scheduler.pt"}, f"the Trainer's checkpoint files changed: {names}; " \
                                                        "fatune.training.integrity.REQUIRED names the old ones"
    from transformers.trainer_utils import unwrap_peft_model  # fatune.training.trainer

    assert callable(unwrap_peft_model)


def test_trainer_saves_the_processing_class_it_holds():
    """fatune.training.trainer keeps the tokenizer out of checkpoints by clearing ``processing_class`` around
    ``save_model``: the Trainer must still read it from that attribute."""
    from transformers import Trainer

    assert "processing_class" in inspect.signature(Trainer.__init__).parameters
    assert "self.processing_class" in inspect.getsource(Trainer._save), (
        "Trainer._save no longer saves self.processing_class; fatune.training.trainer's one-tokenizer-per-run "
        "relies on clearing it")


def test_accelerator_amp_attributes():
    """fatune.training.trainer turns on fp16 autocast on CPU by setting ``accelerator.native_amp`` and
    ``accelerator.scaler`` (accelerate would otherwise run fp16 as fp32 there)."""
    from accelerate import Accelerator

    source = inspect.getsource(Accelerator.__init__)
    for name in ("self.native_amp", "self.scaler"):
        assert name in source, f"accelerate.Accelerator no longer sets {name}; fatune.training.trainer sets it"
    assert hasattr(torch.amp, "GradScaler") and "device" in inspect.signature(torch.amp.GradScaler).parameters


def test_mask_functions_are_called_with_the_keywords_fatune_reads():
    """fatune.attention.varlen_mask reads ``attention_mask``, ``q_length``, ``kv_length``, ``q_offset``,
    ``kv_offset`` as keywords (and passes the rest on to sdpa_mask)."""
    from transformers import masking_utils

    for builder in ("create_causal_mask", "create_sliding_window_causal_mask"):
        source = inspect.getsource(getattr(masking_utils, builder))
        missing = [f"{name}={name}" for name in ("q_length", "kv_length", "q_offset", "kv_offset", "attention_mask")
                   if f"{name}={name}" not in source]
        assert not missing, f"transformers.masking_utils.{builder} no longer passes {missing} to mask functions; " \
                            "fatune.attention.varlen_mask reads them"


@pytest.mark.parametrize("make", ["tiny_gemma2", "tiny_gemma3"])
def test_attention_and_mask_functions_receive_what_fatune_uses(make):
    """A registered attention function gets ``scaling``, ``sliding_window``, ``softcap`` (Gemma 2) and
    ``position_ids``, and a registered mask function the keywords above, on a real forward; fatune's varlen
    functions then reproduce eager attention's logits (the reference)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    import fatune.testing as testing
    from fatune.attention import varlen_attention, varlen_mask

    seen_attention, seen_mask = [], []

    def probe_attention(module, query, key, value, attention_mask, **kwargs):
        seen_attention.append(set(kwargs))
        return varlen_attention(module, query, key, value, attention_mask, **kwargs)

    def probe_mask(**kwargs):
        seen_mask.append(set(kwargs))
        return varlen_mask(**kwargs)

    AttentionInterface.register("fatune_api_probe", probe_attention)
    AttentionMaskInterface.register("fatune_api_probe", probe_mask)
    model = getattr(testing, make)(64)
    ids = torch.arange(1, 13).reshape(1, 12)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])  # two packed conversations
    with torch.no_grad():
        reference = torch.cat([model(input_ids=ids[:, :5]).logits, model(input_ids=ids[:, 5:]).logits], dim=1)
        model.set_attn_implementation("fatune_api_probe")
        packed = model(input_ids=ids, position_ids=positions).logits
    wanted = {"scaling", "sliding_window", "position_ids"} | ({"softcap"} if make == "tiny_gemma2" else set())
    assert seen_attention and all(wanted <= kwargs for kwargs in seen_attention), (
        f"{make}'s attention no longer passes {wanted - set.intersection(*seen_attention)}; "
        "fatune.attention.varlen_attention uses them")
    assert seen_mask and all({"attention_mask", "q_length", "kv_length", "q_offset", "kv_offset"} <= kwargs
                             for kwargs in seen_mask)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)


def test_find_packed_sequence_indices_splits_at_position_resets():
    """fatune.data.pack relies on transformers splitting a packed row where ``position_ids`` restart."""
    from transformers.masking_utils import find_packed_sequence_indices

    found = find_packed_sequence_indices(torch.tensor([[0, 1, 0, 1, 2, 0]]))
    assert found is not None and found.tolist() == [[0, 0, 1, 1, 1, 2]], (
        f"find_packed_sequence_indices gave {found}; fatune.data.pack's packed rows depend on it")


def test_a_models_quantizer_attribute_is_what_save_pretrained_reads():
    """fatune.models._convert_model sets ``model.hf_quantizer = None`` so the dequantized GGUF saves as a plain
    model."""
    from transformers import PreTrainedModel

    assert "hf_quantizer" in inspect.getsource(PreTrainedModel.save_pretrained), (
        "PreTrainedModel.save_pretrained no longer reads hf_quantizer; fatune.models._convert_model clears it")


# --- torch -------------------------------------------------------------------------------------------------


def test_sdpa_shares_key_value_heads_with_enable_gqa():
    """fatune.attention passes ``enable_gqa`` (torch >= 2.5) instead of copying key/value heads."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 5, 8, generator=generator)
    key, value = (torch.randn(1, 2, 5, 8, generator=generator) for _ in range(2))
    shared = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
    copied = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1), is_causal=True)
    torch.testing.assert_close(shared, copied)


# --- peft ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_token_lora():
    """A tiny Gemma 2 with LoRA and trainable chat-token rows (``method.chat_tokens``), as fatune builds it."""
    from peft import LoraConfig, TaskType, get_peft_model

    from fatune.testing import tiny_gemma2

    config = LoraConfig(r=2, target_modules=["q_proj"], task_type=TaskType.CAUSAL_LM, trainable_token_indices=[3, 5])
    model = get_peft_model(tiny_gemma2(64), config)
    with torch.no_grad():
        for layer in model.modules():
            if type(layer).__name__ == "TrainableTokensLayer":
                for delta in layer.trainable_tokens_delta.values():
                    delta.add_(1.0)  # trained rows that differ from the frozen ones
    return model


def test_trainable_token_layers_have_what_fatune_reads(chat_token_lora):
    """fatune.training.head, fatune.generation.loading and fatune.serve.weights find PEFT's trainable-token
    layers by class name and read these attributes."""
    embedding = chat_token_lora.get_input_embeddings()
    adapter = getattr(embedding, "token_adapter", None)
    assert adapter is not None, "PEFT's trainable-tokens wrapper has no token_adapter; fatune.training.head reads it"
    assert type(adapter).__name__ == "TrainableTokensLayer", (
        f"the layer is now {type(adapter).__name__}; fatune.generation.loading and fatune.serve.weights find it by "
        "the name TrainableTokensLayer")
    for name in ("base_layer", "merged", "disable_adapters", "active_adapters", "token_indices",
                 "trainable_tokens_delta"):
        assert hasattr(adapter, name), f"TrainableTokensLayer.{name} is gone; fatune.training.head reads it"
    assert adapter.active_adapters == ["default"] and list(adapter.token_indices["default"]) == [3, 5]


def test_merged_weights_splice_the_trained_rows(chat_token_lora):
    """fatune.training.head.output_weight scores with ``get_merged_weights`` and takes the gradient of the rows
    in ``trainable_tokens_delta`` itself: the merged weight must be the frozen one with exactly those rows."""
    adapter = chat_token_lora.get_input_embeddings().token_adapter
    frozen = adapter.base_layer.weight
    merged = adapter.get_merged_weights(["default"])
    reference = frozen.detach().clone()
    reference[[3, 5]] = adapter.trainable_tokens_delta["default"].detach()
    torch.testing.assert_close(merged.detach(), reference)


def test_merge_and_unmerge_write_the_rows_in_place(chat_token_lora):
    """fatune.generation.loading._merge_trainable_tokens and fatune.serve.weights merge the rows for decoding."""
    adapter = chat_token_lora.get_input_embeddings().token_adapter
    before = adapter.base_layer.weight.detach().clone()
    adapter.merge(adapter_names=["default"])
    try:
        assert adapter.merged
        torch.testing.assert_close(adapter.base_layer.weight[[3, 5]].detach(),
                                   adapter.trainable_tokens_delta["default"].detach())
    finally:
        adapter.unmerge()
    assert not adapter.merged
    torch.testing.assert_close(adapter.base_layer.weight.detach(), before)


def test_ptuning_prompt_shape():
    """fatune.generation.ptuning_cache takes ``get_prompt(batch_size=1)[0]`` as the virtual tokens."""
    from peft import PromptEncoderConfig, TaskType, get_peft_model

    from fatune.testing import tiny_gemma2

    model = get_peft_model(tiny_gemma2(64), PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4,
                                                                encoder_hidden_size=16))
    prompt = model.get_prompt(batch_size=1)
    assert tuple(prompt.shape) == (1, 4, 64), f"PeftModel.get_prompt gave {tuple(prompt.shape)}; " \
                                             "fatune.generation.ptuning_cache expects (batch, virtual, hidden)"


# --- bitsandbytes ------------------------------------------------------------------------------------------


def test_linear4bit_cpu_inference_layout_switch():
    """fatune.methods.qlora.keep_training_layout sets ``support_avx512bf16_for_cpu = False`` on every 4-bit layer so
    bitsandbytes never repacks weights into its inference layout (which has no backward)."""
    bnb = pytest.importorskip("bitsandbytes")

    layer = bnb.nn.Linear4bit(16, 16)
    assert hasattr(layer, "support_avx512bf16_for_cpu"), (
        "bitsandbytes.nn.Linear4bit has no support_avx512bf16_for_cpu; fatune.methods.qlora.keep_training_layout "
        "sets it")
    assert "support_avx512bf16_for_cpu" in inspect.getsource(bnb.nn.Linear4bit.forward), (
        "Linear4bit.forward no longer reads support_avx512bf16_for_cpu; check how it chooses the CPU inference "
        "layout (fatune.methods.qlora)")


# --- huggingface_hub, datasets, sacrebleu ------------------------------------------------------------------


def test_hub_offline_flags(monkeypatch):
    """fatune.hub.offline_unless_reachable sets ``huggingface_hub.constants.HF_HUB_OFFLINE`` (and datasets' copy)
    and probes with ``get_session().head(url, timeout=...)``."""
    import datasets.config
    import huggingface_hub
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import get_session

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert huggingface_hub.is_offline_mode() is True, "huggingface_hub no longer reads constants.HF_HUB_OFFLINE"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert huggingface_hub.is_offline_mode() is False
    assert hasattr(datasets.config, "HF_HUB_OFFLINE"), "datasets.config.HF_HUB_OFFLINE is gone; fatune.hub sets it"
    assert "timeout" in inspect.signature(get_session().head).parameters


def test_dataset_fingerprint():
    """fatune.data.prepare.source_fingerprint keys a hub dataset by ``Dataset._fingerprint``."""
    from datasets import Dataset

    first, same, other = (Dataset.from_dict({"text": rows}) for rows in (["a", "b"], ["a", "b"], ["a", "c"]))
    assert isinstance(first._fingerprint, str) and first._fingerprint
    assert first._fingerprint == same._fingerprint != other._fingerprint


@pytest.mark.parametrize("name", ["chrf", "chrf_plus_plus", "bleu"])
def test_sacrebleu_scores_from_statistics(name):
    """fatune.eval.mt_metrics bootstraps from per-sentence statistics (``_extract_corpus_statistics``,
    ``_compute_score_from_stats``): summed, they must give sacrebleu's own corpus score."""
    from fatune.eval.mt_metrics import metric, score_from_statistics, sentence_statistics

    hypotheses = ["the cat sat on the mat", "a quick brown fox", "hello there"]
    references = ["the cat is on the mat", "the quick brown fox jumps", "hello there"]
    reference = metric(name).corpus_score(hypotheses, [references]).score
    assert score_from_statistics(name, sentence_statistics(name, hypotheses, references)) == pytest.approx(reference)
