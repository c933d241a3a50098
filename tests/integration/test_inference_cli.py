"""fatune generate / chat / export as a user runs them, including every bad input's one-line error."""

import json

import pytest
from conftest import run_cli, write_jsonl


def test_generate_writes_one_line_per_prompt(tiny_runs, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "سلام"}]},
                                                 [{"role": "user", "content": "یک جوک بگو"}]])
    out = tmp_path / "out.jsonl"
    result = run_cli("generate", tiny_runs["ptuning"], "--prompts", prompts, "--out", out, "--max-new-tokens", "8",
                     "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert {"messages", "prompt_ids", "output_ids", "new_tokens", "seconds", "stop_reason"} <= set(row)
    reference = tmp_path / "ref.jsonl"
    assert run_cli("generate", tiny_runs["ptuning"], "--prompts", prompts, "--out", reference, "--max-new-tokens",
                   "8", "--batch-size", "1", "--no-cache").returncode == 0
    assert [r["output_ids"] for r in rows] == [json.loads(l)["output_ids"] for l in reference.read_text().splitlines()]


def test_chat_repl_through_stdin(tiny_runs, tmp_path):
    import subprocess
    import sys

    saved = tmp_path / "chat.jsonl"
    script = f"سلام\n/system شما یک دستیار مفید هستید.\nیک جوک بگو\n/unknown\n/save {saved}\n/reset\n/exit\n"
    result = subprocess.run([sys.executable, "-m", "fatune", "chat", str(tiny_runs["lora"]), "--max-new-tokens", "6"],
                            input=script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("tokens/s]") == 2 and "(system prompt set; conversation cleared)" in out
    assert "(unknown command /unknown" in out and "(conversation cleared)" in out
    conversation = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in conversation] == ["system", "user", "assistant"]  # /system reset the history
    assert conversation[0]["content"] == "شما یک دستیار مفید هستید." and conversation[1]["content"] == "یک جوک بگو"


def test_rtl_display_reorders_persian_lines():
    from fatune.generation.repl import display_line

    shown = display_line("سلام دنیا")
    assert shown != "سلام دنیا" and shown.split()[0] != "سلام"  # visual order: the first word is on the right


@pytest.mark.parametrize("args, message", [
    (["generate", "/no/such/run", "--prompts", "P", "--out", "O"], "/no/such/run: no such run or model directory"),
    (["generate", "RUN", "--prompts", "BAD", "--out", "O"], "prompts.jsonl:21: expected a 'user' turn"),
    (["generate", "RUN", "--prompts", "P", "--out", "O", "--preset", "creative"], "unknown preset 'creative'"),
    (["chat", "RUN", "--preset", "creative"], "unknown preset 'creative'"),
    (["export", "/no/such/run", "--out", "O"], "/no/such/run: no such run directory"),
    (["generate", "UNFINISHED", "--prompts", "P", "--out", "O"], "has no final/ yet (it did not finish); run the same"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_runs, tmp_path, args, message):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "سلام"}]}])
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("{}")
    # Like the seed's prompts file (../shared/seed, not in the repo): its last two prompts give their system
    # prompt the role "assistant".
    hello = {"role": "user", "content": "سلام"}
    wrong_role = {"messages": [{"role": "assistant", "content": "شما یک دستیار هستید."}, hello]}
    bad = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [hello]}] * 20 + [wrong_role] * 2)
    swap = {"RUN": str(tiny_runs["lora"]), "P": str(prompts), "O": str(tmp_path / "o"), "UNFINISHED": str(unfinished),
            "BAD": str(bad)}
    result = run_cli(*[swap.get(a, a) for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fatune: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_push_to_hub_offline_is_one_clear_line(tiny_runs, tmp_path):
    result = run_cli("export", tiny_runs["full"], "--out", tmp_path / "export", "--push-to-hub", "someone/fatune-test",
                     env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--push-to-hub someone/fatune-test: upload failed" in result.stderr
    assert (tmp_path / "export" / "model.safetensors").exists()  # the export itself is kept
