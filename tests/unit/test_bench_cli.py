"""``fatune bench data|embed|generate`` on tiny inputs: the reports' keys and checks, never their timings."""

import json
import shlex

import pytest
from conftest import run_cli

from fatune.cli import main

ENVIRONMENT = {"machine", "torch", "transformers", "peft", "trl", "python", "date"}


def check_environment(report: dict, args) -> None:
    assert ENVIRONMENT <= set(report) and report["command"] == shlex.join(["fatune", *map(str, args)])
    assert "cores" in report["machine"] and report["torch"] and report["python"]


def test_bench_data(tmp_path, tiny_tok_dir):
    out = tmp_path / "data.json"
    args = ["bench", "data", "--conversations", "200", "--baseline-n", "20", "--tokenizer", str(tiny_tok_dir),
            "--out", str(out)]
    result = run_cli(*args)  # as a user runs it: python -m fatune, its own process
    assert result.returncode == 0, result.stderr
    assert "conversations/s" in result.stdout and "prepare = validate + normalize + render + pack" in result.stdout
    report = json.loads(out.read_text())
    check_environment(report, args)
    assert report["conversations"] == 200 and report["conv_per_s"] > 0 and report["rows"] > 0
    assert report["render_batch_same"] is True and report["baseline_n"] == 20
    assert report["train_rows"] + report["val_rows"] > 0


def test_bench_embed_runs_both_row_choices_in_child_processes(tmp_path, tiny_model_dir):
    out = tmp_path / "embed.json"
    args = ["bench", "embed", "--steps", "1", "--max-length", "64", "--model", str(tiny_model_dir), "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    check_environment(report, args)
    everything, persian = report["runs"]
    assert (everything["rows"], persian["rows"]) == ("all", "persian")
    assert 0 < persian["trainable_params"] < everything["trainable_params"]
    assert report["trainable_ratio"] == round(persian["trainable_params"] / everything["trainable_params"], 4)
    for run in report["runs"]:
        assert run["peak_rss_bytes"] > 50e6 and run["seconds_per_step"] > 0 and run["steps"] == 1
        assert run["adamw_state_bytes"] == 8 * run["trainable_params"]


def test_bench_generate_every_method_and_the_cache_comparison(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "generate.json"
    args = ["bench", "generate", "--model", str(tiny_model_dir), "--new-tokens", "4",
            "--prompts", "short chat,long reading", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "--no-cache s" in printed
    report = json.loads(out.read_text())
    check_environment(report, args)
    methods = {m["name"]: m for m in report["methods"]}
    assert list(methods) == ["ptuning", "lora", "qlora", "embed_head", "base"]
    for method in methods.values():
        assert method["new_tokens"] == 8 and method["tokens_per_s"] > 0
        assert [p["prompt"] for p in method["prompts"]] == ["short chat", "long reading"]
    assert methods["lora"]["same_tokens_as_base"] is True  # untrained LoRA (B = 0) is the base function exactly
    assert methods["base"]["same_tokens_as_base"] is None
    compare = report["ptuning_cache"]
    assert compare["model"] == "ptuning" and compare["same_tokens"] is True
    assert [r["same_tokens"] for r in compare["prompts"]] == [True, True]
    assert all(r["no_cache_seconds"] > 0 for r in compare["prompts"])


def test_bench_generate_bf16_vs_fp32(tmp_path, tiny_model_dir, capsys):
    """``--precision both``: each target timed in fp32 and in bf16 (bf16 weights under bf16 autocast), then
    compared: tokens/s and whether greedy decoding produced the same tokens."""
    out = tmp_path / "generate.json"
    assert main(["bench", "generate", "--model", str(tiny_model_dir), "--methods", "base,ptuning", "--new-tokens", "3",
                 "--prompts", "short chat", "--precision", "both", "--no-cache-compare", "--out", str(out)]) == 0
    assert "bf16 tokens/s" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["precision"] == "both"
    assert [(m["name"], m["precision"]) for m in report["methods"]] == [
        ("base", "fp32"), ("base", "bf16"), ("ptuning", "fp32"), ("ptuning", "bf16")]
    compared = {row["name"]: row for row in report["precision_compare"]}
    assert list(compared) == ["base", "ptuning"]
    for row in compared.values():
        assert row["fp32_tokens_per_s"] > 0 and row["bf16_tokens_per_s"] > 0 and row["speedup"] > 0
        assert 0 <= row["differing_share"] <= 1 and row["same_tokens"] == (row["differing_share"] == 0)
        (prompt,) = row["prompts"]
        assert prompt["same_tokens"] == (prompt["first_difference"] is None) == row["same_tokens"]


def test_first_difference_and_the_differing_share():
    from fatune.bench.generate import first_difference, precision_comparison

    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1 and first_difference([1, 2], [1, 2, 3]) == 2
    rows = [{"name": "base", "method": "base", "precision": p, "tokens_per_s": t,
             "prompts": [{"prompt": "a"}, {"prompt": "b"}]} for p, t in (("fp32", 10.0), ("bf16", 25.0))]
    ids = {("base", "fp32"): [[1, 2, 3, 4], [5, 6]], ("base", "bf16"): [[1, 2, 9, 9], [5, 6]]}
    (row,) = precision_comparison(rows, ids)
    assert (row["speedup"], row["same_tokens"], row["differing_share"]) == (2.5, False, round(2 / 6, 4))
    assert [p["first_difference"] for p in row["prompts"]] == [2, None]


def test_bench_generate_without_the_comparison_and_with_a_prompts_file(tmp_path, tiny_model_dir):
    from conftest import write_jsonl

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": "سلام"}]}])
    out = tmp_path / "generate.json"
    assert main(["bench", "generate", "--model", str(tiny_model_dir), "--methods", "ptuning", "--new-tokens", "2",
                 "--prompts", str(prompts), "--no-cache-compare", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ptuning_cache"] is None and report["prompts"] == [{"name": "prompts.jsonl#1", "messages": 1}]
    assert [m["name"] for m in report["methods"]] == ["ptuning"]


@pytest.mark.parametrize("args, message", [
    (["data", "--conversations", "0"], "--conversations must be a positive number"),
    (["embed", "--steps", "-1"], "--steps must be a positive number"),
    (["embed", "--model", "/no/such/model"], "/no/such/model: no such model directory"),
    (["generate", "--methods", "lora,prefix"], "--methods: unknown method 'prefix'"),
    (["generate", "--new-tokens", "0"], "--new-tokens must be a positive number"),
    (["generate", "--run", "/no/such/run"], "--run /no/such/run: no such run directory"),
    (["generate", "--prompts", "short chat,poem"], "--prompts: unknown prompt 'poem'"),
    (["generate", "--prompts", "seed translation", "--shared", "/no/shared"], "pass --shared DIR"),
    (["generate", "--prompts", "seed translation"], "needs DIR/seed/prompts.jsonl; pass --shared DIR"),
    (["generate", "--prompts", "FarsTail NLI"], "needs DIR/data/farstail/val.tsv; pass --shared DIR"),
    (["generate", "--methods", "qlora", "--shape", "gemma3-1b"], "qlora needs a 4-bit model loaded from disk"),
    (["generate", "--model", "/no/such/model"], "--model /no/such/model: no such model directory"),
    (["generate", "--precision", "fp8"], "--precision fp8: choose fp32, bf16 or both"),
    (["train", "--precision", "fp16"], "--precision fp16: choose fp32, bf16 or both"),
])
def test_bad_bench_arguments_are_one_line_and_exit_2(args, message, capsys):
    assert main(["bench", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fatune: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_bench_embed_child_is_a_module_of_the_package():
    """The child runs as ``python -m fatune.bench.embed_rows``: no repo checkout or script path needed."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fatune.bench.embed_rows", "--help"], capture_output=True,
                            text=True, cwd="/")
    assert result.returncode == 0 and "--rows" in result.stdout and "--out-dir" in result.stdout


def test_bench_train_verb_passes_explicit_arguments(monkeypatch):
    """cli.py unpacks its Namespace into the bench's keyword arguments; the bench never sees argparse."""
    import fatune.bench.train

    seen = {}
    monkeypatch.setattr(fatune.bench.train, "run_bench", lambda **kwargs: seen.update(kwargs))
    args = ["bench", "train", "--model", "m", "--method", "qlora", "--conversations", "4", "--batch-size", "2",
            "--heldout", "3", "--repeats", "1", "--farstail", "f.tsv", "--precision", "both", "--arms", "fatune",
            "--variant", "a=train.fused_head=false", "--levers", "--threads", "2", "--out", "o.json"]
    assert main(args) == 0
    assert seen == {"model": "m", "method": "qlora", "data": "fatune:sample", "conversations": 4, "batch_size": 2,
                    "heldout": 3, "repeats": 1, "farstail": "f.tsv", "precision": "both", "arms": "fatune",
                    "variants": ["a=train.fused_head=false"], "levers": True, "threads": 2, "out": "o.json",
                    "command": shlex.join(["fatune", *args])}


def test_bench_train_without_trl_says_how_to_install_it(monkeypatch, capsys):
    """TRL is the ``bench`` extra, not a dependency: asking for a TRL arm without it is one line, before any work."""
    import sys

    from fatune.bench.train import require_trl

    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now fails, as where it is not installed
    assert main(["bench", "train", "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fatune: error: --arms trl-default,trl-best: the TRL arms need trl")
    assert "pip install 'fatune[bench]'" in err and err.count("\n") == 1
    assert main(["bench", "train", "--arms", "fatune,trl-best", "--model", "/no/such/model"]) == 2
    assert "--arms trl-best: " in capsys.readouterr().err
    require_trl(["fatune"])  # fatune's own arm needs no TRL
