"""Generation: one path for every method; cached P-Tuning equals the uncached reference; left padding."""

import json

import pytest
import torch
from peft import PromptEncoderConfig, get_peft_model

from fatune.data import render_prompt
from fatune.generation import load
from fatune.generation.engine import ChatModel
from fatune.generation.loading import Loaded
from fatune.testing import tiny_gemma2, tiny_gemma3

PROMPTS = [
    [{"role": "user", "content": "سلام. تو کی هستی؟"}],
    [{"role": "system", "content": "کوتاه پاسخ بده."},
     {"role": "user", "content": "یک داستان کوتاه در مورد یک مسافر و یک شتر بنویس، با جزئیات و در چند بند."}],
    [{"role": "user", "content": "۲+۲"}],
    [{"role": "user", "content": "پایتخت ایران کجاست؟"}, {"role": "assistant", "content": "تهران."},
     {"role": "user", "content": "جمعیتش چقدر است؟"}],
]


@pytest.fixture(params=["gemma2", "gemma3"])
def ptuned(request, tiny_tok):
    base = tiny_gemma2(len(tiny_tok)) if request.param == "gemma2" else tiny_gemma3(len(tiny_tok))
    torch.manual_seed(1)  # a random prompt encoder: as good as a trained one for equality of paths
    model = get_peft_model(base, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=20,
                                                     encoder_hidden_size=128)).eval()
    return ChatModel(Loaded(model, tiny_tok, "gemma"))


def test_cached_ptuning_in_batches_equals_the_uncached_reference_one_at_a_time(ptuned):
    reference = [ptuned.generate([p], use_cache=False, max_new_tokens=24)[0]["output_ids"] for p in PROMPTS]
    for batch_size in (2, 4):  # prompts of different lengths: left padding inside every batch
        cached = [r["output_ids"] for r in ptuned.generate(PROMPTS, batch_size=batch_size, max_new_tokens=24)]
        assert cached == reference


def test_peft_own_cached_ptuning_is_still_wrong(ptuned):
    # Why fatune.generation.ptuning_cache exists. If this starts failing, PEFT fixed its cached P-Tuning
    # generation and the workaround can go.
    prompt = ptuned.prompt_ids(PROMPTS[1])
    reference = ptuned.generate([PROMPTS[1]], use_cache=False, max_new_tokens=24)[0]["output_ids"]
    with torch.no_grad():
        out = ptuned.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                    use_cache=True, eos_token_id=ptuned.stop_ids)
    assert out[0, len(prompt):].tolist()[:len(reference)] != reference


@pytest.mark.parametrize("method", ["lora", "qlora", "ptuning", "embed_head", "full"])
def test_every_methods_run_generates_in_the_output_format(tiny_runs, tiny_tok, method):
    model = load(str(tiny_runs[method]))
    assert model.loaded.method == method and model.template.name == "gemma"
    results = model.generate(PROMPTS, batch_size=3, max_new_tokens=16)
    singles = [model.generate([p], max_new_tokens=16)[0] for p in PROMPTS]
    for prompt, result, single in zip(PROMPTS, results, singles):
        assert result["output_ids"] == single["output_ids"]  # left padding changes nothing
        assert result["prompt_ids"] == render_prompt(prompt, tiny_tok, "gemma")
        assert result["messages"][:-1] == prompt and result["messages"][-1]["role"] == "assistant"
        assert result["new_tokens"] == len(result["output_ids"]) <= 16
        assert tiny_tok.pad_token_id not in result["output_ids"] or result["stop_reason"] == "end_of_turn"
        assert result["stop_reason"] in ("end_of_turn", "length", "eos")
        text = result["messages"][-1]["content"]
        assert "<start_of_turn>" not in text and "<end_of_turn>" not in text and "<bos>" not in text
        if result["stop_reason"] == "end_of_turn":
            assert result["output_ids"][-1] in model.stop_ids


def test_generation_stops_at_end_of_turn_and_never_echoes_the_prompt(tiny_tok, monkeypatch):
    # A model that always answers "سلام" then <end_of_turn>: the output is exactly that, with the stop token.
    model = ChatModel(Loaded(tiny_gemma2(len(tiny_tok)), tiny_tok, "chatml"))
    answer = tiny_tok("سلام", add_special_tokens=False)["input_ids"] + [tiny_tok.convert_tokens_to_ids("<end_of_turn>")]

    def scripted(prompts, settings, use_cache, streamer=None):
        return torch.tensor([answer + [tiny_tok.pad_token_id] * 3 for _ in prompts])

    monkeypatch.setattr(model, "_generate", scripted)
    result = model.generate(PROMPTS[:2], max_new_tokens=8)[0]
    assert result["output_ids"] == answer and result["stop_reason"] == "end_of_turn"
    assert result["messages"][-1]["content"] == "سلام"


def test_presets_and_overrides():
    from fatune.errors import FatuneError
    from fatune.generation import generation_settings

    assert generation_settings("seed") == {"do_sample": False, "num_beams": 5, "repetition_penalty": 1.5,
                                           "max_new_tokens": 256}
    assert generation_settings("sample", temperature=0.2, max_new_tokens=None)["temperature"] == 0.2
    assert "temperature" not in generation_settings("greedy", temperature=0.2)
    with pytest.raises(FatuneError, match="unknown preset 'creative'"):
        generation_settings("creative")


def test_stream_yields_the_same_text_as_chat(tiny_runs):
    model = load(str(tiny_runs["lora"]))
    streamed = "".join(model.stream(PROMPTS[0], max_new_tokens=16))
    assert streamed.strip() == model.chat(PROMPTS[0], max_new_tokens=16)
    assert model.last_stream_tokens > 0


def test_seed_preset_beam_search_runs_on_the_cached_ptuning_path(tiny_runs):
    model = load(str(tiny_runs["ptuning"]))
    cached = model.generate(PROMPTS[:2], "seed", batch_size=2, max_new_tokens=8)
    reference = [model.generate([p], "seed", use_cache=False, max_new_tokens=8)[0] for p in PROMPTS[:2]]
    assert [r["output_ids"] for r in cached] == [r["output_ids"] for r in reference]


def test_normalization_of_the_run_applies_to_prompts(tiny_runs):
    model = load(str(tiny_runs["lora"]))
    assert model.loaded.normalize is True
    assert model.prompt_ids([{"role": "user", "content": "كتاب"}]) == model.prompt_ids([{"role": "user", "content": "کتاب"}])
    assert json.loads((tiny_runs["lora"] / "final" / "fatune.json").read_text())["normalize"] is True
