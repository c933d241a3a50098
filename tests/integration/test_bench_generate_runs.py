"""``fatune bench generate --run DIR``: trained runs time through the same engine, P-Tuning's cache check included."""

import json

from fatune.cli import main


def test_bench_generate_times_trained_runs(tmp_path, tiny_runs, capsys):
    out = tmp_path / "generate.json"
    assert main(["bench", "generate", "--run", str(tiny_runs["ptuning"]), "--run", str(tiny_runs["embed_head"]),
                 "--new-tokens", "3", "--prompts", "short chat", "--out", str(out)]) == 0
    assert "ptuning (ptuning)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [(m["name"], m["method"], m["source"]) for m in report["methods"]] == [
        ("ptuning (ptuning)", "ptuning", str(tiny_runs["ptuning"])),
        ("embed_head (embed_head)", "embed_head", str(tiny_runs["embed_head"]))]
    assert all(m["new_tokens"] == 3 and m["same_tokens_as_base"] is None for m in report["methods"])
    assert report["ptuning_cache"]["model"] == "ptuning (ptuning)" and report["ptuning_cache"]["same_tokens"] is True
