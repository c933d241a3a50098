"""Plain regression tests for the bugs the fuzz tests (tests/fuzz) found, one input each, and the CLI's exit 2.

Each test names the input, what happened before the fix, and checks the exact message now.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import run_cli

from fatune.cli import main
from fatune.config import load_config
from fatune.data import LoadStats, load_conversations
from fatune.errors import DataError, FatuneError

USER = {"role": "user", "content": "سلام"}
ANSWER = {"role": "assistant", "content": "درود"}
GOOD = json.dumps({"messages": [USER, ANSWER]}, ensure_ascii=False)


def _load(path, **kwargs):
    return [c.messages for c in load_conversations(str(path), normalize=False, **kwargs)]


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as raised:
        _load(path, **kwargs)
    return str(raised.value)


def _config_error(path) -> str:
    with pytest.raises(FatuneError) as raised:
        load_config(path)
    return str(raised.value)


# -- JSONL ---------------------------------------------------------------------------------------------------

def test_jsonl_deeply_nested_line_is_a_data_error(tmp_path):
    """``[[[[...`` 1,500 deep: json.loads raised RecursionError, a traceback."""
    path = tmp_path / "d.jsonl"
    path.write_text(GOOD + "\n" + "[" * 1500 + "]" * 1500 + "\n", encoding="utf-8")
    assert _error(path) == f"{path}:2: not valid JSON: arrays or objects nested too deeply at column 1"


def test_jsonl_integer_of_5000_digits_is_a_data_error(tmp_path):
    """Python 3.11's int limit: json.loads raised a bare ValueError, a traceback."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"messages": ' + "9" * 5000 + "}\n", encoding="utf-8")
    assert _error(path) == f"{path}:1: not valid JSON: a number has more than 4300 digits at column 1"


def test_jsonl_line_of_unicode_space_is_a_record_not_a_blank_line(tmp_path):
    """A line holding only U+00A0 was skipped in silence, though ``#START:END`` counted it as a record."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(f"{GOOD}\n\u00a0\n{GOOD}\n".encode())
    assert _error(path) == f"{path}:2: not valid JSON: Expecting value at column 1"
    stats = LoadStats()
    assert len(_load(path, skip_invalid=True, stats=stats)) == 2 and dict(stats.skipped) == {"invalid_json": 1}
    assert _load(f"{path}#2:3") == [[USER, ANSWER]]  # the third record is the third line


def test_lone_surrogate_in_content_is_refused(tmp_path):
    """``"\\ud800"`` in JSON: loaded as a str the tokenizer and every writer fail on later."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "ab\\ud800"}, {"role": "assistant", "content": "x"}]}\n',
                    encoding="utf-8")
    assert _error(path) == (f"{path}:1: content holds an unpaired surrogate '\\ud800' at character 3, which is not "
                            "a character (a JSON escape like \\ud83d without its pair) (messages[0].content)")


def test_content_emptied_by_normalization_is_refused(tmp_path):
    """Content of only tatweel and ZWNJ passed validation and became "" after normalize_persian."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [USER, {"role": "assistant", "content": "\u0640\u200c"}]}) + "\n",
                    encoding="utf-8")
    with pytest.raises(DataError) as raised:
        list(load_conversations(str(path)))  # training data is normalized by default
    assert str(raised.value) == (f"{path}:1: content is empty after Persian normalization (it held only tatweel "
                                 "or ZWNJ characters) (messages[1].content)")
    assert _load(path) == [[USER, {"role": "assistant", "content": "\u0640\u200c"}]]  # without normalization: kept


def test_huge_role_is_quoted_short(tmp_path):
    """A 100 KB "role" was quoted whole in the one-line message."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "x" * 100_000, "content": "a"}]}) + "\n", encoding="utf-8")
    assert _error(path) == f"{path}:1: unknown role '{'x' * 56}...; expected one of system, user, assistant " \
        "(messages[0].role)"


# -- FarsTail and SIB-200 TSV --------------------------------------------------------------------------------

FARSTAIL_HEADER = "premise\thypothesis\tlabel\n"


def test_farstail_with_a_bom_loads(tmp_path):
    """A BOM stayed in the first column's name: "needs the columns premise, ...; found ['\\ufeffpremise', ...]"."""
    path = tmp_path / "f.tsv"
    path.write_text("\ufeff" + FARSTAIL_HEADER + "متن\tجمله\te\n", encoding="utf-8")
    assert len(_load(path)) == 1


@pytest.mark.parametrize("header", [FARSTAIL_HEADER, "index_id\tcategory\ttext\n"])
def test_task_tsv_with_invalid_utf8_is_a_data_error(tmp_path, header):
    """A bare UnicodeDecodeError from inside csv's iteration, with no line."""
    path = tmp_path / "t.tsv"
    path.write_bytes(header.encode() + b"a\tb\te\n" + b"\xff\tb\te\n")
    assert _error(path) == f"{path}:3: invalid UTF-8: byte 0xff; save the file as UTF-8"


def test_tsv_text_after_the_last_column_is_refused(tmp_path):
    """An unquoted tab in SIB-200's last column (text): the text was cut at the tab without a word."""
    path = tmp_path / "s.tsv"
    path.write_text("index_id\tcategory\ttext\n1\tsports\tاین بازی\tدیروز بود\n", encoding="utf-8")
    assert _error(path) == (f"{path}:2: expected 3 tab-separated columns, found 4 (a field with a tab must be "
                            "quoted)")
    path.write_text("index_id\tcategory\ttext\n1\tsports\tاین بازی\t\n", encoding="utf-8")  # a trailing tab is fine
    assert _load(path)[0][0]["content"].endswith("این بازی")


def test_tsv_blank_lines_are_not_records(tmp_path):
    """A trailing blank line failed the whole file: "expected 3 tab-separated columns, found 0"."""
    path = tmp_path / "f.tsv"
    path.write_text(FARSTAIL_HEADER + "متن\tجمله\te\n\n", encoding="utf-8")
    assert len(_load(path)) == 1


def test_tsv_unclosed_quote_is_a_data_error(tmp_path):
    """A quote opening a field and never closed made the rest of the file one field: csv.Error, a traceback."""
    path = tmp_path / "f.tsv"
    path.write_text(FARSTAIL_HEADER + "متن\tجمله\te\n" + '"متن\tجمله\te\n' + "ب" * 140_000 + "\n", encoding="utf-8")
    assert _error(path).startswith(f"{path}:3: unreadable TSV row (field larger than field limit (131072)); a field "
                                   'that starts with a quote (") runs until the next quote')


def test_farstail_empty_premise_is_refused(tmp_path):
    """An empty premise made a conversation that asks about nothing, kept as valid."""
    path = tmp_path / "f.tsv"
    path.write_text(FARSTAIL_HEADER + " \tجمله\te\n", encoding="utf-8")
    assert _error(path) == f"{path}:2: the premise is empty (premise)"


def test_sib200_with_old_mac_line_ends_is_recognized(tmp_path):
    """CR-only line ends: the header sniff split on \\n only, saw no 'text' column and read SIB-200 as FarsTail."""
    path = tmp_path / "s.tsv"
    path.write_bytes("index_id\tcategory\ttext\r1\tsports\tاین بازی\r".encode())
    assert len(_load(path)) == 1


# -- SQuAD ---------------------------------------------------------------------------------------------------

def test_squad_questions_of_a_bad_paragraph_are_each_counted(tmp_path):
    """A paragraph without context lost all its questions but counted one skip."""
    qas = [{"question": "چه؟", "answers": [], "is_impossible": True}] * 3
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "", "qas": qas}]}]}), encoding="utf-8")
    stats = LoadStats()
    assert _load(path, skip_invalid=True, stats=stats) == [] and dict(stats.skipped) == {"empty_context": 3}


def test_squad_deeply_nested_file_is_a_data_error(tmp_path):
    """RecursionError from json.loads, a traceback."""
    path = tmp_path / "q.json"
    path.write_text('{"data": ' + "[" * 2000 + "]" * 2000 + "}", encoding="utf-8")
    assert _error(path) == f"{path}:1: not valid JSON: arrays or objects nested too deeply at column 1"


# -- parquet and datasets directories ------------------------------------------------------------------------

def test_damaged_parquet_is_one_error(tmp_path):
    """pyarrow's ArrowInvalid ("Parquet magic bytes not found ..."), a traceback."""
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(FatuneError) as raised:
        _load(path)
    assert str(raised.value).startswith(f"{path}: not a readable parquet file (")


def test_damaged_datasets_dir_is_one_error(tmp_path):
    """A datasets folder with a damaged state.json: json.JSONDecodeError from inside datasets, a traceback."""
    import datasets

    path = tmp_path / "ds"
    datasets.Dataset.from_list([{"messages": [USER, ANSWER]}]).save_to_disk(str(path))
    (path / "state.json").write_text("{")
    with pytest.raises(FatuneError) as raised:
        _load(path)
    assert str(raised.value).startswith(f"{path}: a damaged datasets directory (")


# -- config --------------------------------------------------------------------------------------------------

def test_override_that_is_not_yaml_is_one_line():
    """``train.max_steps=[``: yaml's ScannerError, a traceback."""
    with pytest.raises(FatuneError) as raised:
        load_config(None, ["train.max_steps=["])
    assert str(raised.value) == ("command line: train.max_steps: the value '[' is not valid YAML (expected the node "
                                 "content, but found '<stream end>'); quote a string that holds YAML syntax: "
                                 "train.max_steps=\"'...'\"")


def test_config_file_not_utf8_or_not_yaml_is_file_line(tmp_path):
    """Invalid UTF-8 was a UnicodeDecodeError traceback; a YAML error was a message of five lines."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"data:\n  path: \xff\n")
    assert _config_error(path) == f"{path}:2: not UTF-8 (byte 0xff); save the config as UTF-8"
    path.write_text("data:\n  path: [a\ntrain: {}\n", encoding="utf-8")
    assert _config_error(path) == f"{path}:3: not valid YAML: expected ',' or ']', but got ':'"


def test_override_with_an_empty_int_tag_is_one_line():
    """``method.r=!!int ``: PyYAML's int constructor raised IndexError, a traceback."""
    with pytest.raises(FatuneError) as raised:
        load_config(None, ["method.r=!!int "])
    assert str(raised.value).startswith("command line: method.r: the value '!!int ' is not valid YAML (IndexError: ")


def test_config_file_integer_of_5000_digits_is_one_line(tmp_path):
    """A 5000-digit integer: PyYAML's int() raised a bare ValueError (Python 3.11's limit), a traceback."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: " + "9" * 5000 + "\n", encoding="utf-8")
    assert _config_error(path) == f"{path}: not valid YAML: a number has more than 4300 digits"


def test_config_keys_with_a_newline_or_empty_sections_stay_one_line_per_problem(tmp_path):
    """A key holding a newline made a message line without the file's name; an unknown section left empty
    (``bogus: {}``) skipped the unknown-key check and its hint."""
    path = tmp_path / "c.yaml"
    path.write_text('data:\n  sources:\n    - {path: "fatune:sample", "a\\nb": 1}\n', encoding="utf-8")
    assert _config_error(path) == f"{path}: data.sources.0.'a\\nb': Extra inputs are not permitted (got 1)"
    path.write_text("bogus: {}\n", encoding="utf-8")
    assert _config_error(path).startswith(f"{path}: unknown config key 'bogus'")


# -- serve's request schema ----------------------------------------------------------------------------------

def test_serve_deeply_nested_body_is_a_400():
    """64 KiB of ``[``: json.loads raised RecursionError, a 500."""
    from fatune.serve.schema import RequestError, read_json_body

    class Body:
        headers = {}

        async def stream(self):
            yield b"[" * 5000

    with pytest.raises(RequestError) as raised:
        asyncio.run(read_json_body(Body()))
    assert raised.value.status == 400
    assert raised.value.message == "the request body is not valid JSON: arrays or objects nested too deeply"


@pytest.mark.parametrize("field, value, message", [
    ("seed", 2**64, "seed: Input should be less than or equal to 18446744073709551615"),
    ("messages", [{"role": "user", "content": "a\ud800"}],
     "messages[0].content: content holds an unpaired surrogate '\\ud800' at character 2, which is not a character "
     "(a JSON escape like \\ud83d without its pair)"),
])
def test_serve_values_that_failed_after_validation_are_a_400(field, value, message):
    """A seed torch.manual_seed cannot take, a lone surrogate the tokenizer cannot take: both passed the schema and
    failed in the worker (a 500)."""
    from fatune.serve.schema import RequestError, parse_chat_request

    with pytest.raises(RequestError) as raised:
        parse_chat_request({"model": "m", "messages": [USER], field: value})
    assert (raised.value.status, raised.value.message) == (400, message)


# -- the CLI: exit 2 and one line ----------------------------------------------------------------------------

def test_cli_bad_prompts_file_is_exit_2_and_one_line(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [USER]}) + "\n" + "[" * 1500 + "\n", encoding="utf-8")
    assert main(["data", "inspect", str(path), "--prompts"]) == 2
    assert capsys.readouterr().err == (f"fatune: error: {path}:2: not valid JSON: arrays or objects nested too "
                                       "deeply at column 1\n")


def test_cli_bad_override_is_exit_2_and_one_line_in_a_subprocess(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {path: 'fatune:sample'}\n", encoding="utf-8")
    result = run_cli("data", "prepare", config, "data.max_length={")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("fatune: error: command line: data.max_length: the value '{' is not valid YAML")
    assert len(result.stderr.strip().splitlines()) == 1


def test_empty_datasets_split_is_no_rows(tmp_path):
    """datasets saves an empty split with zero shards and cannot load it back (IndexError): an empty source
    has no rows, and the other split of the same folder still loads."""
    import datasets

    path = tmp_path / "ds"
    empty = datasets.Dataset.from_dict({"messages": []})
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"messages": [USER, ANSWER]}]),
                          "val": empty}).save_to_disk(str(path))
    assert _load(path) == [[USER, ANSWER]]
    assert _load(path, split="val") == []
