"""GGUF export figures for docs/benchmarks.md: file size, and load + first-token seconds, of a run exported as
safetensors and as GGUF f16 and q8_0, side by side.

    python -m fatune.bench.gguf RUN [--outtypes f16,q8_0] [--work DIR] [--out report.json]

Each load + first token is timed in a fresh child process (imports excluded, so the figure is the file's,
not Python's): safetensors through ``AutoModelForCausalLM.from_pretrained(dir)``, GGUF through transformers'
GGUF loader (``gguf_file=``, which dequantizes to fp32 while loading, so it measures reading the file, not
llama.cpp's speed) and, where ``llama_cpp`` is importable, through llama.cpp itself. The first token is one
greedy token after a short Persian chat prompt.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
kind, directory, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
began = time.perf_counter()
if kind == "llama.cpp":
    import llama_cpp
    model = llama_cpp.Llama(model_path=f"{directory}/model.gguf", n_ctx=512, verbose=False)
    loaded = time.perf_counter()
    next(iter(model.generate(ids, top_k=1, temp=0.0)))
else:
    extra = {"gguf_file": "model.gguf"} if kind == "gguf" else {}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **extra).eval()
    loaded = time.perf_counter()
    with torch.no_grad():
        model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()
done = time.perf_counter()
print(json.dumps({"load_s": round(loaded - began, 3), "first_token_s": round(done - loaded, 3)}))
"""


def _time(kind: str, directory: Path, ids: list[int]) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, kind, str(directory), json.dumps(ids)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _mb(directory: Path, pattern: str) -> float:
    return round(sum(p.stat().st_size for p in directory.glob(pattern)) / 1e6, 1)


def bench_gguf(run: str | Path, outtypes=("f16", "q8_0"), work: str | Path | None = None) -> dict:
    from fatune.bench.common import environment
    from fatune.export import export
    from fatune.generation import load

    work = Path(work or tempfile.mkdtemp(prefix="fatune-bench-gguf-"))
    chat = load(str(run))
    ids = chat.prompt_ids([{"role": "user", "content": "سلام! یک جمله درباره پاییز بنویس."}])
    del chat
    rows = []
    safetensors = export(run, work / "safetensors")
    rows.append({"format": "safetensors (fp32)", "file_mb": _mb(safetensors, "*.safetensors"),
                 "transformers": _time("safetensors", safetensors, ids)})
    env = environment()
    try:
        import llama_cpp

        has_llama_cpp = True
        env["llama_cpp_python"] = llama_cpp.__version__  # a source build: its version names the llama.cpp it vendors
    except ImportError:
        has_llama_cpp = False
    for outtype in outtypes:
        out = export(run, work / f"gguf-{outtype}", format="gguf", outtype=outtype)
        row = {"format": f"gguf {outtype}", "file_mb": _mb(out, "model.gguf"), "transformers": _time("gguf", out, ids)}
        if has_llama_cpp:
            row["llama.cpp"] = _time("llama.cpp", out, ids)
        rows.append(row)
    return {"benchmark": "gguf export", "run": str(run), "work": str(work), "prompt_tokens": len(ids),
            "rows": rows, "environment": env}


def main(argv=None) -> int:
    import shlex

    from fatune.bench.common import format_table, write_report

    parser = argparse.ArgumentParser(prog="python -m fatune.bench.gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished fatune run (not P-Tuning)")
    parser.add_argument("--outtypes", default="f16,q8_0")
    parser.add_argument("--work", help="where the exports go (default: a new temporary dir, kept)")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)
    report = bench_gguf(args.run, tuple(args.outtypes.split(",")), args.work)
    report["command"] = shlex.join(["python", "-m", "fatune.bench.gguf", *(sys.argv[1:] if argv is None else argv)])

    def cell(timing, key):
        return timing.get(key, timing.get("error")) if timing else None

    table = [[r["format"], r["file_mb"], cell(r["transformers"], "load_s"), cell(r["transformers"], "first_token_s"),
              cell(r.get("llama.cpp"), "load_s"), cell(r.get("llama.cpp"), "first_token_s")] for r in report["rows"]]
    print(format_table(["format", "file MB", "HF load s", "HF first token s", "llama.cpp load s",
                        "llama.cpp first token s"], table))
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
