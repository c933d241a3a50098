"""Write directories and files atomically, so a crash, a Ctrl-C or a full disk never leaves a half-written
model or dataset, and never damages the previous one.

Every write goes to a temporary name beside the target and is renamed into place only when complete. When
the disk fills up on the way (``ENOSPC``, or a quota's ``EDQUOT``), the partial copy is removed, the target
is left as it was (an earlier export, prepared dataset or answers file keeps every byte), and the error
becomes a ``DiskFullError``: one line, ``no space left on device writing PATH: ...``, that the CLI prints
with exit code 2 instead of a traceback from deep inside safetensors, pyarrow or json.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from fatune.errors import FatuneError

# errno values of a full disk: no free blocks (ENOSPC) or a user's quota used up (EDQUOT).
NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# Libraries that write in their own code wrap the OS error in their own exception, with the errno only in
# the text: safetensors 0.8 (Rust) raises SafetensorError("Error while serializing: I/O error: No space left on
# device (os error 28)") and pyarrow may raise an OSError without errno. These are the texts of errno 28 and 122
# (Linux, macOS), and Rust's ErrorKind names for them.
NO_SPACE_TEXTS = ("no space left on device", "storagefull", "disk quota exceeded", "quotaexceeded")


class DiskFullError(FatuneError):
    """The disk filled up while fatune was writing ``path``; nothing at ``path`` was changed."""

    def __init__(self, path: Path, cause: BaseException | None = None):
        self.path = Path(path)
        free = _free_bytes(self.path)
        left = f"{free / 1e6:.1f} MB are free there now" if free is not None else "the free space is unknown"
        kept = "the earlier copy is unchanged" if self.path.exists() else "nothing was written"
        super().__init__(f"no space left on device writing {self.path}: {left}, {kept}; free some space (or "
                         "write somewhere else) and run the command again")
        self.cause = cause  # raised "from None" (the CLI shows one line); kept for tests and callers


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` (or an exception it was raised from) says the disk or a quota is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        text = str(error).lower().replace(" ", "")
        if any(marker.replace(" ", "") in text for marker in NO_SPACE_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):  # the nearest folder that exists
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def publish_dir(build: Callable[[Path], None], target: Path, replace: bool = False) -> Path:
    """Run ``build(tmp_dir)`` next to ``target`` and rename the result to ``target``.

    With ``replace=False`` an existing ``target`` wins (another process finished first); with
    ``replace=True`` the old ``target`` is removed only after the new one is fully built.
    A full disk while building raises ``DiskFullError`` after removing the partial ``tmp_dir``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        if is_disk_full(error):  # not even room for the empty folder
            raise DiskFullError(target, error) from None
        raise
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
    except Exception as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise  # a DiskFullError from a nested write already names its own path
        # Free the partial copy before measuring what is left, so the message tells the space really free.
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFullError(target, error) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_jsonl_atomic(path: Path, rows) -> Path:
    """Write ``rows`` as JSON lines to ``path`` via a temporary file, so a crash never leaves half a file.

    A full disk raises ``DiskFullError``; the temporary file is removed and an existing ``path`` (answers of
    an earlier run) keeps every byte."""
    import json

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except Exception as error:
        tmp.unlink(missing_ok=True)  # a partial file would hold on to the space that ran out
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(path, error) from None
        raise
    return path
