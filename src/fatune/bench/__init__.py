"""Benchmarks behind ``fatune bench``: each verb prints a table and writes a JSON report with the
machine, the library versions and the exact command, so a figure in docs/benchmarks.md can be rerun.

* ``fatune bench data`` (``fatune.bench.data``): conversations/s of data preparation (validate,
  normalize, render, pack), the full ``prepare()`` cold and cached, and batched vs one-by-one rendering.
* ``fatune bench embed`` (``fatune.bench.embed_rows``): embed_head ``rows=all`` vs ``rows=persian``:
  trainable parameters, AdamW state, peak RSS of each training child process, seconds per step.
* ``fatune bench generate`` (``fatune.bench.generate``): tokens/s of each method through fatune's
  generation engine, and cached vs ``--no-cache`` P-Tuning generation (with a same-tokens check).

``fatune.bench.common`` holds what they share: machine and version info, the command line, tables,
JSON reports and the peak RSS of a child process.
"""
