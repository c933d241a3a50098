"""Write directories atomically, so a crash or Ctrl-C never leaves a half-written model or dataset."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def publish_dir(build: Callable[[Path], None], target: Path, replace: bool = False) -> Path:
    """Run ``build(tmp_dir)`` next to ``target`` and rename the result to ``target``.

    With ``replace=False`` an existing ``target`` wins (another process finished first); with
    ``replace=True`` the old ``target`` is removed only after the new one is fully built.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary shared directory
        if replace and target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_jsonl_atomic(path: Path, rows) -> Path:
    """Write ``rows`` as JSON lines to ``path`` via a temporary file, so a crash never leaves half a file."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
