"""Prepare training data: load, dedupe, subset, split, render, truncate, pack; cached on disk.

``prepare(config)`` runs the whole pipeline for a config's ``model`` and ``data`` sections and returns
the train and validation splits as ``datasets.Dataset``s of rows (``input_ids``, ``labels``,
``position_ids``, ``seq_lengths``), plus a report of what was kept and dropped.

The result is cached under ``$FATUNE_CACHE/prepared/KEY`` where KEY hashes the source's content, the
tokenizer, the template, the data settings and the fatune version: a second run with the same inputs
is fast, and any change to them (an edited file included) gives a new key, so stale data is never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fatune import __version__
from fatune.data.pack import pack, unpacked
from fatune.data.render import IGNORE, render_batch, truncate
from fatune.data.sources import (
    LoadStats,
    hub_dataset,
    is_hub_id,
    load_conversations,
    local_path,
)
from fatune.data.templates import get_template
from fatune.fsutil import publish_dir

log = logging.getLogger(__name__)
COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")


def dedupe(conversations: Sequence[Any]) -> tuple[list[Any], int]:
    """Drop exact duplicates (same roles and contents), keeping the first; return (kept, n_dropped)."""
    seen, kept = set(), []
    for conversation in conversations:
        key = json.dumps(conversation.messages, ensure_ascii=False, sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(conversation)
    return kept, len(conversations) - len(kept)


def take_fraction(items: Sequence[Any], fraction: float, seed: int) -> list[Any]:
    """A deterministic subset of ``round(fraction * n)`` items (at least one), in their original order."""
    if fraction >= 1:
        return list(items)
    count = max(1, round(fraction * len(items)))
    chosen = np.random.default_rng([seed, 1]).permutation(len(items))[:count]
    return [items[i] for i in sorted(chosen)]


def split(items: Sequence[Any], val_ratio: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic train/val split: a seeded permutation, the first ``round(val_ratio * n)`` go to val."""
    n_val = round(val_ratio * len(items))
    if val_ratio > 0 and len(items) > 1:
        n_val = max(1, min(n_val, len(items) - 1))
    order = np.random.default_rng(seed).permutation(len(items))
    val_ids = set(order[:n_val].tolist())
    train = [item for i, item in enumerate(items) if i not in val_ids]
    val = [item for i, item in enumerate(items) if i in val_ids]
    return train, val


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def source_fingerprint(source: str, split_name: str = "train") -> str:
    """A hash of the source's content (files, directories) or of the hub dataset's own fingerprint."""
    digest = hashlib.sha256()
    path = local_path(source)
    if path.is_file():
        _hash_file(digest, path)
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            _hash_file(digest, file)
        digest.update(split_name.encode())
    elif is_hub_id(source):
        digest.update(f"hub:{source}:{split_name}:{hub_dataset(source, split_name)._fingerprint}".encode())
    else:
        digest.update(str(source).encode())  # load_conversations reports the missing file
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides token ids: the vocabulary, merges, normalizer and special tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass
class Prepared:
    """Prepared splits and the report of how they were made."""

    train: Any  # datasets.Dataset
    val: Any
    report: dict
    path: Path


def _rows_to_dataset(rows: list[dict]):
    import datasets
    import pyarrow as pa

    ints = pa.list_(pa.int32())
    table = pa.table({column: pa.array([row[column] for row in rows], type=ints) for column in COLUMNS})
    return datasets.Dataset(table)


def _build_rows(conversations, tokenizer, template, data_cfg) -> tuple[list[dict], dict]:
    samples = render_batch(conversations, tokenizer, template, train_on=data_cfg.train_on)
    kept, truncated = [], 0
    for sample in samples:
        truncated += len(sample["input_ids"]) > data_cfg.max_length
        sample = truncate(sample, data_cfg.max_length)
        if sample is not None:
            kept.append(sample)
    rows = pack(kept, data_cfg.max_length) if data_cfg.packing else unpacked(kept)
    tokens = sum(len(s["input_ids"]) for s in kept)
    stats = {"conversations": len(kept), "truncated": truncated, "dropped_no_trained_token": len(samples) - len(kept),
             "rows": len(rows), "tokens": tokens,
             "trained_tokens": sum(sum(label != IGNORE for label in s["labels"]) for s in kept),
             "fill": round(tokens / (len(rows) * data_cfg.max_length), 4) if rows else 0.0}
    return rows, stats


def _save(splits, path: Path) -> None:
    # One shard per split: datasets writes zero shards for an empty split (val_ratio=0) and then
    # cannot load it back.
    splits.save_to_disk(str(path), num_shards={name: 1 for name in splits})


def cache_key(config, tokenizer) -> str:
    template = get_template(config.model.template, tokenizer)
    settings = config.data.model_dump(exclude={"cache"})
    parts = {"version": __version__, "source": source_fingerprint(config.data.path, config.data.split),
             "tokenizer": tokenizer_fingerprint(tokenizer), "template": [template.name, template.jinja],
             "data": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def prepare(config, tokenizer=None) -> Prepared:
    """Run the data pipeline for ``config`` (a ``fatune.config.Config``), reusing the cache when valid."""
    import datasets

    from fatune.models import cache_dir, load_tokenizer

    tokenizer = tokenizer or load_tokenizer(config.model.tokenizer or config.model.path)
    key = cache_key(config, tokenizer)
    target = cache_dir() / "prepared" / key
    if config.data.cache and (target / "report.json").exists():
        log.info("using prepared data from %s", target)
        loaded = datasets.load_from_disk(str(target))
        return Prepared(loaded["train"], loaded["val"], json.loads((target / "report.json").read_text()), target)

    started = time.perf_counter()
    data = config.data
    stats = LoadStats()
    conversations = list(load_conversations(data.path, purpose="train", skip_invalid=data.skip_invalid,
                                            normalize=data.normalize, split=data.split, stats=stats,
                                            digits=data.digits))
    loaded_count = len(conversations)
    duplicates = 0
    if data.dedupe:
        conversations, duplicates = dedupe(conversations)
    conversations = take_fraction(conversations, data.fraction, data.seed)
    train, val = split(conversations, data.val_ratio, data.seed)
    template = get_template(config.model.template, tokenizer)
    train_rows, train_stats = _build_rows(train, tokenizer, template, data)
    val_rows, val_stats = _build_rows(val, tokenizer, template, data)
    report = {"source": data.path, "key": key, "template": template.name, "loaded": loaded_count,
              "skipped": dict(stats.skipped), "duplicates": duplicates, "after_fraction": len(conversations),
              "train": train_stats, "val": val_stats, "seconds": round(time.perf_counter() - started, 2)}
    splits = datasets.DatasetDict({"train": _rows_to_dataset(train_rows), "val": _rows_to_dataset(val_rows)})

    def write(tmp: Path) -> None:
        _save(splits, tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))

    if config.data.cache:
        publish_dir(write, target, replace=True)  # replaces a stale entry that lacks report.json
        loaded = datasets.load_from_disk(str(target))
        return Prepared(loaded["train"], loaded["val"], report, target)
    return Prepared(splits["train"], splits["val"], report, target)


def write_prepared(prepared: Prepared, out_dir: str | Path) -> Path:
    """Save prepared splits (a ``datasets`` dir with ``train`` and ``val``) and ``report.json`` to ``out_dir``."""
    import datasets

    def write(tmp: Path) -> None:
        _save(datasets.DatasetDict({"train": prepared.train, "val": prepared.val}), tmp)
        (tmp / "report.json").write_text(json.dumps(prepared.report, indent=2, ensure_ascii=False))

    return publish_dir(write, Path(out_dir), replace=True)
