"""Write a Gemma 2 / Gemma 3 model as one GGUF file for llama.cpp, Ollama and LM Studio.

The file follows llama.cpp's own converter (``convert_hf_to_gguf.py``: ``Gemma2Model``, ``Gemma3Model``)
and the graph llama.cpp builds from it (``src/llama-model.cpp``, ``load_hparams`` for ``LLM_ARCH_GEMMA2``
and ``LLM_ARCH_GEMMA3``); names and keys come from the ``gguf`` package's tables (``MODEL_ARCH``,
``get_tensor_name_map``, ``GGUFWriter``), never spelled by hand:

* Gemma's RMSNorm computes ``x * (1 + w)`` and HF stores ``w``; llama.cpp's norm is ``x * w``, so every
  ``*norm.weight`` (Gemma 3's q/k norms too) is written as ``w + 1``.
* The embedding is scaled by sqrt(hidden) inside llama.cpp's gemma graphs: nothing to write. The LM head
  is tied to the embedding (no ``output.weight``); Gemma 3 may carry an untied head, Gemma 2 cannot.
* Attention scale: llama.cpp scales queries by 1/sqrt(key_length) (by 1/sqrt(hidden/heads) for the 27B
  layer counts), so a model whose ``query_pre_attn_scalar`` is neither is refused rather than written wrong. Likewise the local
  layer pattern (Gemma 2: every other layer sliding; Gemma 3: five sliding, one global) and Gemma 3's
  local RoPE base (10000) are fixed in llama.cpp, and a model that differs is refused. Soft-capping
  (Gemma 2), sliding window, RoPE bases and a linear RoPE scaling of the global layers are written.
* ``--outtype``: f32 keeps every tensor in fp32; f16/bf16/q8_0 convert the 2-D weights and keep 1-D
  tensors (norms) in f32, as llama.cpp does; q8_0 falls back to f16 for rows not a multiple of its
  32-value block, as llama.cpp's converter does.

The tokenizer is written by ``fatune.gguf_vocab``. The file is built in a temporary directory next to
``out`` and renamed into place (``publish_dir``), so a failure never leaves a partial ``model.gguf``.
"""

from __future__ import annotations

from pathlib import Path

from fatune.errors import FatuneError
from fatune.fsutil import publish_dir

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_OUTTYPE = "f16"  # what fatune export --format gguf writes without --outtype (the CLI shows it from here)
ARCHITECTURES = {"Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
                 "Gemma3ForConditionalGeneration": "gemma3"}  # its text model; vision goes to a separate mmproj file
LOCAL_ROPE_BASE = 10000.0  # llama.cpp's rope_freq_base_train_swa for gemma3
SLIDING_EVERY = {"gemma2": 2, "gemma3": 6}  # llama.cpp's set_swa_pattern(n): every n-th layer is global


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise FatuneError(f"--outtype {outtype}: choose one of {', '.join(OUTTYPES)}")


def architecture(model_or_config) -> str:
    """The llama.cpp architecture of a model, or of a config before its weights are loaded."""
    names = getattr(model_or_config, "architectures", None) or [type(model_or_config).__name__]
    if names[0] not in ARCHITECTURES:
        raise FatuneError(f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {names[0]}")
    return ARCHITECTURES[names[0]]


def write_gguf(model, tokenizer, template, out: str | Path, outtype: str = DEFAULT_OUTTYPE,
               name: str = "fatune model") -> Path:
    """Write ``out/model.gguf``, ``out/Modelfile`` and ``out/README.md``. ``template``: a fatune template
    name (``gemma``, ``chatml``, ``hf``, ``auto``) or a ``ChatTemplate``."""
    import gguf

    from fatune.data.templates import get_template
    from fatune.gguf_vocab import add_vocab

    check_outtype(outtype)
    arch = architecture(model)
    config = model.config.get_text_config()
    _check(arch, config)
    tensors = _state(model, arch)
    chat = get_template(template, tokenizer)

    def build(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp / "model.gguf", arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(_file_type(outtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(writer, arch, config)
        add_vocab(writer, tokenizer, config.vocab_size, chat.jinja, chat.end_of_turn,
                  add_bos=tokenizer.bos_token is not None)  # fatune's templates and Gemma's open with BOS
        for gguf_name, data in tensors:
            array, raw_dtype = _encode(data, outtype)
            writer.add_tensor(gguf_name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        context = min(4096, config.max_position_embeddings)
        (tmp / "Modelfile").write_text(modelfile(chat, context), encoding="utf-8")
        (tmp / "README.md").write_text(README.format(name=name, outtype=outtype, template=chat.name,
                                                     end=chat.end_of_turn), encoding="utf-8")

    return publish_dir(build, Path(out), replace=True)


def _file_type(outtype: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def _rope(config, layer_type: str) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    return dict(params.get(layer_type, params))


def _check(arch: str, config) -> None:
    """Refuse what llama.cpp's graph would compute differently (its choices are fixed, not read from the file)."""
    problems = []
    # llama.cpp: queries scaled by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for its 27B layer counts
    scales = {config.head_dim}
    if config.num_hidden_layers == {"gemma2": 46, "gemma3": 62}[arch]:
        scales.add(config.hidden_size // config.num_attention_heads)
    if config.query_pre_attn_scalar not in scales:
        problems.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} is not the head dim "
                        f"{config.head_dim} (llama.cpp scales queries by 1/sqrt(head_dim))")
    if config.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
        problems.append(f"the activation is {config.hidden_activation} (llama.cpp uses tanh-approximated GELU)")
    if getattr(config, "attention_bias", False):
        problems.append("the attention has biases (llama.cpp's Gemma has none)")
    every = SLIDING_EVERY[arch]
    expected = ["full_attention" if (i + 1) % every == 0 else "sliding_attention"
                for i in range(config.num_hidden_layers)]
    if list(getattr(config, "layer_types", None) or expected) != expected:
        problems.append(f"the layer types are {config.layer_types} (llama.cpp makes every {every}th layer global)")
    if arch == "gemma2" and config.attn_logit_softcapping is None:
        problems.append("the attention is not soft-capped (llama.cpp's gemma2 always soft-caps it)")
    if arch == "gemma3":
        local, glob = _rope(config, "sliding_attention"), _rope(config, "full_attention")
        if (local.get("rope_theta", LOCAL_ROPE_BASE), local.get("rope_type", "default")) != (LOCAL_ROPE_BASE, "default"):
            problems.append(f"the local RoPE is {local} (llama.cpp's gemma3 uses base {LOCAL_ROPE_BASE:g}, unscaled)")
        if glob.get("rope_type", "default") not in ("default", "linear"):
            problems.append(f"the global RoPE type is {glob.get('rope_type')} (llama.cpp: default or linear)")
        if config.attn_logit_softcapping is not None:
            problems.append("the attention is soft-capped (llama.cpp's gemma3 never does)")
        if getattr(config, "use_bidirectional_attention", False):
            problems.append("the attention is bidirectional (an embedding model)")
    if problems:
        raise FatuneError(f"GGUF export: {problems[0]}, so llama.cpp would compute this {arch} model differently")


def _add_hparams(writer, arch: str, config) -> None:
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
    if config.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    if arch == "gemma2":
        writer.add_rope_freq_base(_rope(config, "full_attention").get("rope_theta", 10000.0))
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        return
    glob = _rope(config, "full_attention")
    writer.add_rope_freq_base(glob.get("rope_theta", 1_000_000.0))  # the global layers'
    writer.add_rope_freq_base_swa(_rope(config, "sliding_attention").get("rope_theta", LOCAL_ROPE_BASE))
    if glob.get("rope_type") == "linear":  # Gemma 3 4B and up stretch the global layers' RoPE by 8
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(glob["factor"])


def _state(model, arch: str) -> list[tuple[str, object]]:
    """(GGUF name, fp32 numpy array) for the text model's weights, norms shifted by +1."""
    import gguf

    config = model.config.get_text_config()
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), config.num_hidden_layers)
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[getattr(gguf.MODEL_ARCH, arch.upper())]}
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is None or head.weight is embedding.weight or head.weight.data_ptr() == embedding.weight.data_ptr()
    if not tied and arch == "gemma2":
        raise FatuneError("GGUF export: this gemma2 model has an LM head untied from its embedding, which "
                          "llama.cpp's gemma2 cannot hold")
    out = []
    for key, tensor in model.state_dict().items():
        if key.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            continue  # Gemma 3's image encoder: llama.cpp reads it from a separate mmproj file
        key = key.replace("model.language_model.", "model.")
        if key == "lm_head.weight" and tied:
            continue
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None or _tensor_kind(gguf_name.rsplit(".", 1)[0]) not in allowed:
            raise FatuneError(f"GGUF export: {key} has no place in llama.cpp's {arch}")
        data = tensor.detach().to("cpu").float()
        if key.endswith("norm.weight"):
            data = data + 1.0  # Gemma's x * (1 + w) as llama.cpp's x * w
        out.append((gguf_name, data.numpy()))
    return out


def _tensor_kind(base: str) -> str:
    """``blk.3.attn_q`` -> ``blk.{bid}.attn_q`` (the form in ``gguf.TENSOR_NAMES``)."""
    parts = base.split(".")
    return ".".join(["blk", "{bid}", *parts[2:]]) if parts[0] == "blk" else base


def _encode(data, outtype: str):
    """The array to store and its GGML type (None: numpy's own dtype says it)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if data.ndim < 2 or outtype == "f32":
        return data.astype(np.float32, copy=False), None
    if outtype == "bf16":
        return quants.quantize(data, Q.BF16), Q.BF16
    if outtype == "q8_0" and data.shape[-1] % quants.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return quants.quantize(data, Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), None  # f16, and q8_0's fallback for rows it cannot block


def go_template(chat) -> str:
    """An Ollama (Go text/template) TEMPLATE laying out turns as ``chat`` (a fatune TurnTemplate) does."""
    start, end = chat.start, chat.end_of_turn
    assistant = chat.roles["assistant"]
    role = f'{{{{ if eq .Role "assistant" }}}}{assistant}{{{{ else }}}}{{{{ .Role }}}}{{{{ end }}}}'
    if chat.fold_system:  # Gemma has no system role: the system prompt opens the first user turn
        return ('{{- $system := "" }}{{- $first := true }}\n'
                '{{- range .Messages }}\n'
                '{{- if eq .Role "system" }}{{ $system = .Content }}\n'
                f'{{{{- else }}}}{start}{role}\n'
                '{{ if and $first $system }}{{ $system }}\n\n{{ end }}'
                f'{{{{ .Content }}}}{end}\n'
                '{{ $first = false }}\n'
                '{{- end }}\n'
                f'{{{{- end }}}}{start}{assistant}\n')
    return ('{{- range .Messages }}'
            f'{start}{role}\n'
            f'{{{{ .Content }}}}{end}\n'
            f'{{{{ end }}}}{start}{assistant}\n')


def modelfile(chat, context: int = 4096) -> str:
    """The Ollama Modelfile: the template of the run, a stop at its end-of-turn token, fatune's sample preset."""
    from fatune.data.templates import TurnTemplate
    from fatune.generation.presets import PRESETS

    note = ""
    if not isinstance(chat, TurnTemplate):  # the tokenizer's own Jinja cannot be translated to Go: use the layout
        note = ("# The run used the tokenizer's own Jinja template (it is in the GGUF as tokenizer.chat_template,\n"
                "# which llama.cpp --jinja uses); this Go template lays turns out between its turn tokens.\n")
        chat = _turn_layout(chat)
    sample = PRESETS["sample"]
    return (f"# Ollama: ollama create NAME -f Modelfile && ollama run NAME\n{note}"
            f"FROM ./model.gguf\n\n"
            f'TEMPLATE """{go_template(chat)}"""\n\n'
            f'PARAMETER stop "{chat.end_of_turn}"\n'
            f"PARAMETER temperature {sample['temperature']}\n"
            f"PARAMETER top_p {sample['top_p']}\n"
            f"PARAMETER repeat_penalty {sample['repetition_penalty']}\n"
            f"PARAMETER num_ctx {context}\n")


def _turn_layout(chat):
    from fatune.data.templates import get_template

    gemma = getattr(chat, "end_of_turn", None) == "<end_of_turn>"
    return get_template("gemma" if gemma else "chatml", chat.tokenizer)


README = """# {name} (GGUF, {outtype}) exported by fatune

`model.gguf` holds the weights, the tokenizer and the chat template (`{template}`); `Modelfile` is for Ollama.

## llama.cpp

```bash
llama-cli -m model.gguf -cnv --jinja          # chat in the terminal, with the template stored in the file
llama-server -m model.gguf --jinja --port 8080  # an OpenAI-compatible server
```

`--jinja` renders the exact template the model was trained with. Generation should stop at `{end}`
(the file marks it as the end-of-turn token).

## Ollama

```bash
ollama create my-persian-model -f Modelfile
ollama run my-persian-model
```

LM Studio: import `model.gguf`; it reads the template from the file.
"""
