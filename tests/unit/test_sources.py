"""Loaders: every source format yields the same validated conversations."""


import pytest
from conftest import CONVERSATION, FARSTAIL_TEST, MULTI_TURN, run_cli, shared_path, write_jsonl

from fatune.data import load_conversations, sample_path
from fatune.data.farstail import ANSWERS, OPTIONS
from fatune.errors import DataError, FatuneError

EXPECTED = [CONVERSATION["messages"], MULTI_TURN["messages"]]


def _messages(source, **kwargs):
    return [c.messages for c in load_conversations(source, **kwargs)]


def test_slimorca_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "slim.jsonl", [CONVERSATION, MULTI_TURN])
    loaded = list(load_conversations(path))
    assert [c.messages for c in loaded] == EXPECTED
    assert [(c.source, c.line) for c in loaded] == [(str(path), 1), (str(path), 2)]


def test_bare_message_lists(tmp_path):
    path = write_jsonl(tmp_path / "bare.jsonl", [CONVERSATION["messages"], MULTI_TURN["messages"]])
    assert _messages(path) == EXPECTED


def test_sharegpt(tmp_path):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    records = [{"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conv]}
               for conv in EXPECTED]
    assert _messages(write_jsonl(tmp_path / "sharegpt.jsonl", records)) == EXPECTED


def test_datasets_directory_and_dataset_dict(tmp_path):
    import datasets

    table = datasets.Dataset.from_list([CONVERSATION, MULTI_TURN])
    table.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": table, "test": table.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert _messages(tmp_path / "single") == EXPECTED
    assert _messages(tmp_path / "dict") == EXPECTED
    assert _messages(tmp_path / "dict", split="test") == EXPECTED[:1]
    with pytest.raises(FatuneError, match="has no split 'validation'"):
        _messages(tmp_path / "dict", split="validation")


def test_parquet_reports_row_numbers(tmp_path):
    import datasets

    bad = {"messages": [{"role": "user", "content": "سلام"}, {"role": "user", "content": "سلام"}]}
    datasets.Dataset.from_list([CONVERSATION, MULTI_TURN, bad]).to_parquet(str(tmp_path / "data.parquet"))
    with pytest.raises(DataError) as error:
        _messages(tmp_path / "data.parquet")
    assert error.value.line == 3 and error.value.field == "messages[1].role"
    assert _messages(tmp_path / "data.parquet", skip_invalid=True) == EXPECTED


@pytest.mark.parametrize("split, rows", [("train", 7266), ("val", 1537), ("test", 1564)])
def test_farstail_counts(split, rows):
    # The full splits (the bundled subsets are counted in test_task_loaders.py).
    assert sum(1 for _ in load_conversations(shared_path(f"data/farstail/{split}.tsv"))) == rows


def test_farstail_conversation_shape():
    first = next(load_conversations(FARSTAIL_TEST))
    system, user, assistant = first.messages
    assert system["role"] == "system" and user["role"] == "user" and assistant["role"] == "assistant"
    premise, question, hypothesis, options = user["content"].split("\n")
    assert premise.startswith("دوران امامت امام صادق") and options == OPTIONS
    assert hypothesis.startswith("امام سجاد (ع)")
    assert assistant["content"] == ANSWERS["c"] == "3. خیر"
    labels = {c.messages[-1]["content"] for c in load_conversations(FARSTAIL_TEST)}
    assert labels == {"1. بله", "2. نمی‌توان گفت", "3. خیر"}


def test_farstail_quoted_record_spanning_lines_reports_its_first_line(tmp_path):
    # FarsTail quotes fields with tabs or newlines; the record's first line is what a user looks for.
    path = tmp_path / "ft.tsv"
    path.write_text('premise\thypothesis\tlabel\nمتن\tجمله\te\n"متن\nدو خطی"\tجمله\tx\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        list(load_conversations(path))
    assert (error.value.line, error.value.field, error.value.reason) == (3, "label", "bad_label")


def test_farstail_missing_column(tmp_path):
    path = tmp_path / "ft.tsv"
    path.write_text("premise\tlabel\nمتن\te\n", encoding="utf-8")
    with pytest.raises(DataError, match="needs the columns premise, hypothesis, label"):
        list(load_conversations(path))


def test_bundled_sample():
    conversations = list(load_conversations("fatune:sample"))
    assert len(conversations) >= 150
    assert sum(c.messages[0]["role"] == "system" for c in conversations) < len(conversations)
    assert sum(sum(m["role"] == "user" for m in c.messages) > 1 for c in conversations) >= 5
    assert conversations[0].source == str(sample_path())


def _check_one_sentence_failure(result):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fatune: error:")]
    assert len(errors) == 1
    assert "could not load this Hugging Face Hub dataset" in errors[0] and "save_to_disk" in errors[0]


def test_hub_id_fails_with_one_sentence_in_offline_mode(tmp_path):
    # HF_HUB_OFFLINE and an empty datasets cache make this the offline path on any machine.
    _check_one_sentence_failure(run_cli("data", "inspect", "miladmim/slim-orca-dedup-chat-50k-persian",
                                        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path)}))


def test_hub_id_fails_fast_without_a_network(tmp_path):
    from fatune.hub import hub_reachable

    if hub_reachable():
        pytest.skip("this machine reaches the Hub")
    result = run_cli("data", "inspect", "miladmim/slim-orca-dedup-chat-50k-persian",
                     env={"HF_DATASETS_CACHE": str(tmp_path)})
    _check_one_sentence_failure(result)
    assert "Retrying" not in result.stderr


def test_missing_local_file_is_a_clear_error():
    with pytest.raises(FatuneError, match="no such file or directory"):
        list(load_conversations("./does/not/exist.jsonl"))


def test_normalization_is_on_for_training_and_can_be_switched_off(tmp_path):
    path = write_jsonl(tmp_path / "arabic.jsonl", [{"messages": [
        {"role": "user", "content": "كتاب علي"}, {"role": "assistant", "content": "بله"}]}])
    assert _messages(path)[0][0]["content"] == "کتاب علی"
    assert _messages(path, normalize=False)[0][0]["content"] == "كتاب علي"
    prompt = write_jsonl(tmp_path / "prompt.jsonl", [{"messages": [{"role": "user", "content": "كتاب"}]}])
    assert _messages(prompt, purpose="prompt")[0][0]["content"] == "كتاب"  # prompts: off unless asked
