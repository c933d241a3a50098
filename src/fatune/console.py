"""How a fatune process talks on the terminal: its log format, and the library progress bars it silences.

The ``fatune`` command line sets these up before a verb runs, and so does every child process a benchmark
starts (``python -m fatune.bench.embed_rows``), so a child's messages look like the command's own.
"""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """fatune's own messages go to stderr as ``fatune: ...``; other libraries keep their own format."""
    logger = logging.getLogger("fatune")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fatune: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    # bitsandbytes 0.50 on AVX512-BF16 CPUs tries to fetch an optional inference kernel from the Hub at import
    # and warns on every command when it cannot; the kernel only speeds up 4-bit inference, never training.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in str(record.msg))


def quiet_progress_bars() -> None:
    """datasets draws a progress bar for every save_to_disk; fatune prints its own summary instead."""
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
