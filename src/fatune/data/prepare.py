"""Prepare training data: load, dedupe, subset, split, mix, render, truncate, pack; cached on disk.

``prepare(config)`` runs the whole pipeline for a config's ``model`` and ``data`` sections and returns
the train and validation splits as ``datasets.Dataset``s of rows (``input_ids``, ``labels``,
``position_ids``, ``seq_lengths``), plus a report of what was kept and dropped.

Each source (``data.path``, or every entry of ``data.sources``) is loaded, deduplicated, subset by
``fraction`` and split into train/val on its own; grouped conversations (a SQuAD article's questions)
stay on one side, so validation never sees a passage that training saw. ``count``/``weight`` then
resize each source's train part, never its val part. A mix (``data.sources``) is shuffled with the
seed; the ``data.path`` shorthand keeps the file's order, as before mixes existed.

The result is cached under ``$FATUNE_CACHE/prepared/KEY`` where KEY hashes the source's content, the
tokenizer, the template, the data settings, the fatune version and the pipeline's own code (``code_fingerprint``:
the ``fatune.data`` package's source files): a second run with the same inputs is fast, and any change to
them (an edited file, or an edit to ``render.py``) gives a new key, so stale data is never served.
"""

from __future__ import annotations

import functools
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
from fatune.data.records import LoadStats, local_path
from fatune.data.sources import hub_dataset, is_hub_id, load_conversations, parse_source, split_pair
from fatune.errors import FatuneError
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
    """Deterministic train/val split: a seeded permutation, the first ``round(val_ratio * n)`` go to val.

    When items have a ``group`` (SQuAD: ``FILE#article``), whole groups are split instead, in order of
    first appearance, so a group's items all land on one side; an ungrouped item is a group of its own.
    Ungrouped data therefore splits exactly as it always did.
    """
    units: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        group = getattr(item, "group", None)
        units.setdefault(("group", group) if group is not None else ("item", i), []).append(i)
    members = list(units.values())
    n_val = round(val_ratio * len(members))
    if val_ratio > 0 and len(members) > 1:
        n_val = max(1, min(n_val, len(members) - 1))
    order = np.random.default_rng(seed).permutation(len(members))
    val_ids = {i for unit in order[:n_val].tolist() for i in members[unit]}
    train = [item for i, item in enumerate(items) if i not in val_ids]
    val = [item for i, item in enumerate(items) if i in val_ids]
    return train, val


def resize(items: Sequence[Any], count: int | None = None, weight: float | None = None,
           seed: int | Sequence[int] = 42, name: str = "source") -> list[Any]:
    """A source's training part resized for a mix: ``count`` items or ``weight`` times as many.

    Samples are seeded and keep the original order; ``weight`` above 1 repeats whole copies and adds a
    seeded sample for the fraction (2.5: two copies, then half of the items once more).
    """
    if count is not None:
        if count > len(items):
            raise FatuneError(f"data.sources ({name}): count is {count} but the source has only {len(items)} "
                              "training conversations (after dedupe and the validation split); lower count "
                              "or use weight to upsample")
        return _sample(items, count, seed)
    if weight is None:
        return list(items)
    whole = int(weight)
    return list(items) * whole + _sample(items, round((weight - whole) * len(items)), seed)


def _sample(items: Sequence[Any], count: int, seed: int | Sequence[int]) -> list[Any]:
    seeds = [seed] if isinstance(seed, int) else list(seed)
    chosen = np.random.default_rng([*seeds, 2]).permutation(len(items))[:count]
    return [items[i] for i in sorted(chosen)]


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def source_fingerprint(source: str, split_name: str = "train") -> str:
    """A hash of the source's content (files, pairs, directories) or of the hub dataset's own fingerprint,
    plus its ``#START:END`` selector."""
    digest = hashlib.sha256()
    spec, rows = parse_source(source)
    pair = split_pair(spec)
    path = local_path(spec)
    if pair is not None:
        for side in pair:
            if local_path(side).is_file():
                _hash_file(digest, local_path(side))
            digest.update(b"+")
    elif path.is_file():
        _hash_file(digest, path)
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode())
            _hash_file(digest, file)
        digest.update(split_name.encode())
    elif is_hub_id(spec):
        digest.update(f"hub:{spec}:{split_name}:{hub_dataset(spec, split_name)._fingerprint}".encode())
    else:
        digest.update(spec.encode())  # load_conversations reports the missing file
    if rows is not None:
        digest.update(f"#{rows.start}:{rows.stop}".encode())
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


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the data pipeline's source code: every ``.py`` file of the ``fatune.data`` package.

    fatune's version stays 0.1.0 while the code changes, so the version alone let an edit to ``render.py``
    (or a loader, the templates, packing, validation, normalization) keep serving rows made by the old code.
    Every module that shapes a prepared row lives in this package (it imports nothing else of fatune's but
    errors, fsutil and hub, which shape no rows); hashing the whole package rather than a hand-kept list means
    a new module is covered without anyone remembering to add it, at the price of a re-prepare after an edit
    that changes no rows (``inspect.py``). Computed once per process: the files do not change under a run."""
    return package_fingerprint(Path(__file__).resolve().parent)


def package_fingerprint(package: Path) -> str:
    """A hash of the names and bytes of every ``.py`` file under ``package`` (nothing else: data files are
    fingerprinted as sources, compiled caches follow the sources)."""
    digest = hashlib.sha256()
    for file in sorted(Path(package).rglob("*.py")):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0")
        _hash_file(digest, file)
        digest.update(b"\0")
    return digest.hexdigest()


def cache_key(config, tokenizer) -> str:
    template = get_template(config.model.template, tokenizer)
    settings = config.data.model_dump(exclude={"cache"})
    sources = [s.path for s in config.data.sources] or [config.data.path]
    parts = {"version": __version__, "code": code_fingerprint(),
             "source": [source_fingerprint(path, config.data.split) for path in sources],
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
    train, val, stats, per_source = _load_mix(data)
    template = get_template(config.model.template, tokenizer)
    train_rows, train_stats = _build_rows(train, tokenizer, template, data)
    val_rows, val_stats = _build_rows(val, tokenizer, template, data)
    report = {"source": data.path if not data.sources else [s.path for s in data.sources], "key": key,
              "template": template.name, "loaded": sum(s["loaded"] for s in per_source),
              "skipped": dict(stats.skipped), "duplicates": sum(s["duplicates"] for s in per_source),
              "after_fraction": sum(s["after_fraction"] for s in per_source), "sources": per_source,
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


def _load_mix(data) -> tuple[list, list, LoadStats, list[dict]]:
    """Every source loaded, deduplicated, subset, split and resized; the train parts concatenated (and
    shuffled for a ``data.sources`` mix), the val parts concatenated."""
    stats = LoadStats()
    train, val, per_source = [], [], []
    for index, source in enumerate(data.sources or [None]):
        path = source.path if source is not None else data.path
        source_stats = LoadStats()  # per source, so each source's skip warning counts its own records
        conversations = list(load_conversations(path, purpose="train", skip_invalid=data.skip_invalid,
                                                normalize=data.normalize, split=data.split, stats=source_stats,
                                                digits=data.digits,
                                                questions_per_chat=source.questions_per_chat if source else 1))
        stats.kept += source_stats.kept
        stats.skipped.update(source_stats.skipped)
        loaded = len(conversations)
        duplicates = 0
        if data.dedupe:
            conversations, duplicates = dedupe(conversations)
        conversations = take_fraction(conversations, data.fraction, data.seed)
        source_train, source_val = split(conversations, data.val_ratio, data.seed)
        if source is not None:
            source_train = resize(source_train, source.count, source.weight, [data.seed, index], path)
        per_source.append({"path": path, "loaded": loaded, "skipped": dict(source_stats.skipped),
                           "duplicates": duplicates,
                           "after_fraction": len(conversations), "train": len(source_train),
                           "val": len(source_val)})
        train += source_train
        val += source_val
    if data.sources:
        train = [train[i] for i in np.random.default_rng([data.seed, 3]).permutation(len(train))]
    return train, val, stats, per_source


def write_prepared(prepared: Prepared, out_dir: str | Path) -> Path:
    """Save prepared splits (a ``datasets`` dir with ``train`` and ``val``) and ``report.json`` to ``out_dir``."""
    import datasets

    def write(tmp: Path) -> None:
        _save(datasets.DatasetDict({"train": prepared.train, "val": prepared.val}), tmp)
        (tmp / "report.json").write_text(json.dumps(prepared.report, indent=2, ensure_ascii=False))

    return publish_dir(write, Path(out_dir), replace=True)
