"""Validation: one bad record per reason, reported as FILE:LINE: message (field) with exit code 2."""

import json

import pytest
from conftest import CONVERSATION, run_cli, shared_path, write_jsonl

from fatune.data import LoadStats, load_conversations
from fatune.errors import DataError

GOOD = json.dumps(CONVERSATION, ensure_ascii=False)
GOOD_PROMPT = json.dumps({"messages": CONVERSATION["messages"][:2]}, ensure_ascii=False)
USER = {"role": "user", "content": "سلام"}
ANSWER = {"role": "assistant", "content": "درود"}

# (reason, bad line, expected message fragment, expected field, purpose)
CASES = [
    ("invalid_json", '{"messages": [', "not valid JSON", None, "train"),
    ("unknown_format", '{"text": "سلام"}', "unknown record shape", None, "train"),
    ("empty_conversation", '{"messages": []}', "has no messages", "messages", "train"),
    ("bad_message", '{"messages": ["سلام"]}', "a message must be an object", "messages[0]", "train"),
    ("missing_field", {"messages": [{"role": "user"}]}, "no 'content' field", "messages[0].content", "train"),
    ("unknown_role", {"messages": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'", "messages[0].role",
     "train"),
    ("unknown_role", {"conversations": [{"from": "robot", "value": "x"}]}, "unknown role 'robot'",
     "conversations[0].from", "train"),
    ("bad_content", {"messages": [USER, {"role": "assistant", "content": 5}]}, "content must be a string",
     "messages[1].content", "train"),
    ("empty_content", {"messages": [USER, {"role": "assistant", "content": "  "}]}, "content is empty",
     "messages[1].content", "train"),
    ("bad_order", {"messages": [USER, USER]}, "expected an 'assistant' turn after 'user', found 'user'",
     "messages[1].role", "train"),
    ("bad_order", {"messages": [USER, ANSWER, {"role": "system", "content": "x"}]},
     "a system message may only come first", "messages[2].role", "train"),
    ("bad_order", {"messages": [ANSWER, USER]}, "give it the role 'system'", "messages[0].role", "prompt"),
    ("no_assistant", {"messages": [USER]}, "needs at least one assistant turn", "messages[0].role", "train"),
    ("last_not_user", {"messages": [USER, ANSWER]}, "must end with a user turn", "messages[1].role", "prompt"),
]


def _file(tmp_path, bad, purpose="train"):
    good = GOOD if purpose == "train" else GOOD_PROMPT
    return write_jsonl(tmp_path / "data.jsonl", [good, "", bad if isinstance(bad, str) else json.dumps(bad)])


@pytest.mark.parametrize("reason, bad, message, field, purpose", CASES)
def test_cli_reports_file_line_field_and_exits_2(tmp_path, reason, bad, message, field, purpose):
    path = _file(tmp_path, bad, purpose)
    result = run_cli("data", "inspect", path, *(["--prompts"] if purpose == "prompt" else []))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = next(l for l in result.stderr.splitlines() if "data.jsonl" in l)
    assert f"{path}:3: " in line  # the bad record is on line 3 (line 2 is blank)
    assert message in line
    assert line.endswith(f"({field})") if field else not line.endswith(")")


@pytest.mark.parametrize("reason, bad, message, field, purpose", CASES)
def test_skip_invalid_keeps_good_records_and_counts_the_reason(tmp_path, reason, bad, message, field, purpose):
    stats = LoadStats()
    kept = list(load_conversations(_file(tmp_path, bad, purpose), purpose=purpose, skip_invalid=True, stats=stats))
    assert len(kept) == 1 and stats.kept == 1
    assert stats.skipped == {reason: 1}


def test_invalid_utf8_is_reported_at_the_line_of_the_first_bad_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + GOOD.encode() + b"\n" + b'{"messages": "\xff\xfe"}\n' + b"\xff\n")
    with pytest.raises(DataError) as error:
        list(load_conversations(path))
    assert (error.value.line, error.value.reason) == (3, "invalid_utf8")
    result = run_cli("data", "inspect", path)
    assert result.returncode == 2 and f"{path}:3: invalid UTF-8: byte 0xff at byte 15" in result.stderr


def test_cli_skip_invalid_reports_counts_and_exits_0(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, '{"messages": [', json.dumps({"messages": [USER]}), GOOD])
    result = run_cli("data", "inspect", path, "--skip-invalid")
    assert result.returncode == 0, result.stderr
    assert "conversations: 2" in result.stdout
    assert "invalid_json 1" in result.stdout and "no_assistant 1" in result.stdout


def test_seed_prompts_reject_the_system_prompt_given_the_assistant_role():
    # The seed's last two prompts give their system prompt the role "assistant" (shared/README.md). The file has
    # no license to copy it into the repo; the same mistake in a file of our own is tested above ("bad_order").
    seed_prompts = shared_path("seed/prompts.jsonl")
    result = run_cli("data", "inspect", seed_prompts, "--prompts")
    assert result.returncode == 2
    assert f"{seed_prompts}:21: expected a 'user' turn first, found 'assistant'" in result.stderr
    stats = LoadStats()
    assert len(list(load_conversations(seed_prompts, purpose="prompt", skip_invalid=True, stats=stats))) == 20
    assert stats.skipped == {"bad_order": 2}
