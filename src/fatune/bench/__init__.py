"""Benchmarks behind ``fatune bench``: each verb prints a table and writes a JSON report with the
machine, the library versions and the exact command, so a figure in docs/benchmarks.md can be rerun.

* ``fatune bench data`` (``fatune.bench.data``): conversations/s of data preparation (validate,
  normalize, render, pack), the full ``prepare()`` cold and cached, and batched vs one-by-one rendering.
* ``fatune bench embed`` (``fatune.bench.embed_rows``): embed_head ``rows=all`` vs ``rows=persian``:
  trainable parameters, AdamW state, peak RSS of each training child process, seconds per step.
* ``fatune bench generate`` (``fatune.bench.generate``): tokens/s of each method through fatune's
  generation engine, cached vs ``--no-cache`` P-Tuning generation (with a same-tokens check), and with
  ``--precision both`` bf16 vs fp32 (tokens/s and whether greedy decoding gives the same tokens).
* ``fatune bench head`` (``fatune.bench.head``): the fused LM head alone vs full logits.
* ``fatune bench train`` (``fatune.bench.train``, each arm in ``fatune.bench.worker``): fatune vs TRL on
  identical training work, in fp32, bf16 or both.
* ``bench/gpu_check.sh`` (helpers in ``fatune.bench.gpu_check``): the CUDA checks, in one script.

``fatune.bench.common`` holds what they share: machine and version info, the command line, tables,
JSON reports and the peak RSS of a child process.
"""
