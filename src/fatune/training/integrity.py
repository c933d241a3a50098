"""Check a checkpoint before a resume hands it to the HF Trainer, and set damaged ones aside.

A ``step-N`` directory is renamed into place only once its save finished (see ``FatuneTrainer``), but a
disk can still lose or truncate files after that: a full disk that a copy tool ignored, a user's
``rsync`` cut short, a file system repaired after a crash. The HF Trainer then dies deep in
``_load_from_checkpoint`` with a traceback, and the run cannot go on until someone finds and deletes the
folder. Here every file the resume reads is checked cheaply (headers and sizes, not the tensors):

* the weights (``adapter_model.safetensors``, ``model.safetensors`` or a sharded index and its shards):
  the safetensors header parses and its offsets end exactly at the file's size, and
  ``safetensors.safe_open`` accepts it;
* ``optimizer.pt``, ``scheduler.pt``, ``rng_state*.pth`` (and any other ``torch.save`` file): present
  and readable zip archives (``torch.save``'s format keeps its index at the end, so a truncated file
  fails);
* ``trainer_state.json`` (its ``global_step`` must be N), ``fatune.json`` and every other JSON file parse.

A damaged checkpoint is renamed to ``step-N.corrupt`` (``.corrupt-2`` and so on when taken), kept for
inspection, so that step N can be saved again; the previous checkpoint is checked in turn.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

from fatune.artifact import FATUNE_JSON
from fatune.training.rundir import checkpoints

log = logging.getLogger(__name__)

WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"{path.name} is truncated ({size} bytes, no header)"
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            return f"{path.name} is truncated ({size} bytes; its header alone needs {length + 8})"
        try:
            header = json.loads(handle.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path.name} has an unreadable safetensors header"
    if 8 + length + end != size:
        return f"{path.name} is truncated or damaged ({size} bytes where its header says {8 + length + end})"
    from safetensors import safe_open

    try:  # the library's own checks (dtypes, shapes and offsets agree), as loading will run them
        with safe_open(str(path), "np"):
            pass
    except Exception as error:  # noqa: BLE001 - any refusal means the Trainer's load would fail too
        return f"{path.name} is not a readable safetensors file ({error})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError):
        return f"{path.name} is truncated or damaged (not a complete torch.save archive)"


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} is not valid JSON"
    return None


def checkpoint_problem(path: Path, need_meta: bool = True) -> str | None:
    """What makes checkpoint ``path`` (``step-N``) unusable for resuming, or None when it is whole.
    ``need_meta``: the run writes ``fatune.json`` into its checkpoints (all but embed_head on a row subset)."""
    path = Path(path)
    required = list(REQUIRED) + ([FATUNE_JSON] if need_meta else [])
    missing = [name for name in required if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHTS):
        missing.insert(0, "model weights (adapter_model.safetensors or model.safetensors)")
    if not any(path.glob("rng_state*.pth")):
        missing.append("rng_state.pth")
    if missing:
        return f"missing {', '.join(missing)}"
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        if file.suffix == ".json":
            problem = _json_problem(file)
        elif file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        elif file.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_problem(file)
        else:
            continue
        if problem:
            return problem
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set((json.loads(index.read_text()).get("weight_map") or {}).values())
        absent = sorted(name for name in shards if not (path / name).is_file())
        if absent:
            return f"missing weight shards {', '.join(absent)}"
    step = json.loads((path / "trainer_state.json").read_text()).get("global_step")
    if f"step-{step}" != path.name:
        return f"trainer_state.json says global_step {step}"
    return None


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``step-N.corrupt`` (or ``.corrupt-2``, ...), out of every listing."""
    target, n = path.with_name(f"{path.name}.corrupt"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{n}")
    os.replace(path, target)
    return target


def usable_checkpoint(out: Path, need_meta: bool = True) -> Path | None:
    """The newest whole checkpoint of run ``out``; newer damaged ones are set aside with a warning each.
    Main process only, with the run lock held (it renames folders)."""
    set_aside_any = False
    for _, path in reversed(checkpoints(out)):
        problem = checkpoint_problem(path, need_meta)
        if problem is None:
            if set_aside_any:
                log.warning("using the previous complete checkpoint, %s", path)
            return path
        moved = set_aside(path)
        set_aside_any = True
        log.warning("warning: checkpoint %s is damaged (%s); moved it to %s", path, problem, moved.name)
    if set_aside_any:
        log.warning("warning: no complete checkpoint is left; training starts again from step 0")
    return None
