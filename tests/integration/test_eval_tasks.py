"""fatune eval's qa, translate and sib200 tasks (and the per-item data of every task) on the tiny random model."""

import json

import pytest
from conftest import CONVERSATION, FARSTAIL_TEST, write_jsonl

from fatune.cli import main
from fatune.eval.run import evaluate, parse_tasks
from fatune.eval.stats import GAIN_METRICS, gains, task_kind

CONTEXT_1 = "تهران پایتخت ایران است و در دامنه کوه‌های البرز قرار دارد."
CONTEXT_2 = "اصفهان در مرکز ایران است و میدان نقش جهان در آن قرار دارد."


def squad(path, context=CONTEXT_1, answer="تهران"):
    document = {"version": "v2.0", "data": [
        {"title": "تهران", "paragraphs": [{"context": context, "qas": [
            {"id": "q1", "question": "پایتخت ایران کجاست؟",
             "answers": [{"text": answer, "answer_start": context.find("تهران")}], "is_impossible": False},
            {"id": "q2", "question": "جمعیت تهران چقدر است؟", "answers": [], "is_impossible": True}]}]},
        {"title": "اصفهان", "paragraphs": [{"context": CONTEXT_2, "qas": [
            {"id": "q3", "question": "میدان نقش جهان کجاست؟",
             "answers": [{"text": "اصفهان", "answer_start": 0}], "is_impossible": False}]}]}]}
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def sib200(path, third="sports"):
    rows = [("1", "science/technology", "این گوشی تازه باتری بهتری دارد."),
            ("2", "travel", "پرواز ما به شیراز تأخیر داشت."), ("3", third, "تیم ملی فوتبال دیروز برد.")]
    path.write_text("index_id\tcategory\ttext\n" + "".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pair(tmp_path, persian_lines=3):
    eng = tmp_path / "eng.txt"
    fas = tmp_path / "fas.txt"
    eng.write_text("The weather is cold.\nI read a book.\nTehran is big.\n", encoding="utf-8")
    fas.write_text("\n".join(["هوا سرد است.", "من کتاب می‌خوانم.", "تهران بزرگ است."][:persian_lines]) + "\n",
                   encoding="utf-8")
    return f"{eng}+{fas}"


@pytest.fixture(scope="module")
def results(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tasks")
    mc = write_jsonl(tmp / "quiz.jsonl", [
        {"question": "پایتخت ایران کجاست؟", "candidates": ["تهران", "کابل", "دوشنبه"], "answer": 1},
        {"question": "۲+۲ چند می‌شود؟", "candidates": ["سه", "چهار"], "answer": 2}])
    loss = write_jsonl(tmp / "val.jsonl", [CONVERSATION, CONVERSATION])
    tasks = (f"qa:{squad(tmp / 'squad.json')},sib200:{sib200(tmp / 'sib.tsv')},translate:{pair(tmp)},mc:{mc},"
             f"fidelity,loss:{loss},farstail:{FARSTAIL_TEST}")
    out = tmp / "metrics.json"
    return evaluate(str(tiny_model_dir), tasks, limit=3, max_new_tokens=4, out=out), out, tasks


def test_new_tasks_report_their_metrics_and_per_item_data(results):
    metrics, out, tasks = results
    assert set(metrics) == {"qa:squad", "sib200:sib", "translate:eng", "mc:quiz", "fidelity", "loss", "farstail",
                            "_meta"}
    qa = metrics["qa:squad"]
    assert qa["n"] == 3 and qa["item_ids"] == ["q1", "q2", "q3"] and (qa["has_ans_n"], qa["no_ans_n"]) == (2, 1)
    assert 0 <= qa["exact_match"] <= qa["f1"] + 1e-9 <= 100 and len(qa["f1_ci95"]) == 2
    assert qa["max_new_tokens"] == 4 and len(qa["samples"]) == 3 and qa["samples"][1]["impossible"]
    sib = metrics["sib200:sib"]
    assert sib["n"] == 3 and sib["item_ids"] == ["2", "3", "4"] and 0 <= sib["acc_norm"] <= 1
    assert set(sib["confusion"]) == {"science/technology", "travel", "politics", "sports", "health",
                                     "entertainment", "geography"}
    mt = metrics["translate:eng"]
    assert mt["n"] == 3 and mt["item_ids"] == ["1", "2", "3"] and 0 <= mt["chrf"] <= 100
    assert mt["samples"][0]["reference"] == "هوا سرد است." and "tok:intl" in mt["signatures"]["bleu"]
    for key in ("mc:quiz", "farstail"):
        assert {"accuracy", "acc_norm", "accuracy_ci95", "n"} <= set(metrics[key])
    assert len(metrics["fidelity"]["clean_persian_rate_ci95"]) == 2
    for key, result in metrics.items():
        if key == "_meta":
            continue
        n = len(result["item_ids"])
        assert n == result.get("n", result.get("rows")) and n > 0, key
        assert all(len(values) == n for values in result["per_item"].values()), key
    assert metrics["_meta"]["tasks"] == {key: spec for key, spec in zip(
        ["qa:squad", "sib200:sib", "translate:eng", "mc:quiz", "fidelity", "loss", "farstail"], tasks.split(","))}
    written = out.read_text()
    assert json.loads(written)["qa:squad"]["per_item"] == qa["per_item"]
    assert '"acc_norm": [' in written  # per-item lists on one line


def test_every_task_has_what_gains_need(results):
    metrics = results[0]
    for key, result in metrics.items():
        if key == "_meta":
            continue
        same = gains(result, result, key, resamples=50)
        assert set(same) == {metric for metric, _ in GAIN_METRICS[task_kind(key)]}, key
        assert all(g["delta"] == 0 and g["ci95"] == [0, 0] and not g["significant"] for g in same.values()), key


def test_selectors_and_limit(tiny_model_dir, tmp_path):
    tasks = (f"qa:{squad(tmp_path / 'squad.json')}#1:2,sib200:{sib200(tmp_path / 'sib.tsv')}#1:3,"
             f"translate:{pair(tmp_path)}#1:3,farstail:{FARSTAIL_TEST}#2:4")
    metrics = evaluate(str(tiny_model_dir), tasks, limit=1, max_new_tokens=2)
    assert metrics["qa:squad"]["item_ids"] == ["q3"]                 # the second article
    assert metrics["sib200:sib"]["item_ids"] == ["3"]                # rows 1-2 (0-based), then --limit 1
    assert metrics["translate:eng"]["item_ids"] == ["2"]
    assert metrics["farstail"]["item_ids"] == ["4"]                  # row 2 (0-based) is line 4, after the header
    assert metrics["_meta"]["tasks"]["qa:squad"].endswith("squad.json#1:2")


def test_task_list_errors_before_the_model_loads(tmp_path):
    from fatune.errors import FatuneError

    for spec, message in [("qa", "the qa task needs a file"), ("translate:only.txt", r"translate:SRC\+TGT"),
                          (f"sib200:{tmp_path / 'none.tsv'}", "no such file"),
                          (f"qa:{tmp_path / 'a' / 'x.json'},qa:{tmp_path / 'b' / 'x.json'}", "no such file")]:
        with pytest.raises(FatuneError, match=message):
            parse_tasks(spec)
    for side in "ab":
        (tmp_path / side).mkdir()
        squad(tmp_path / side / "x.json")
    with pytest.raises(FatuneError, match="would both be reported as 'qa:x'"):
        parse_tasks(f"qa:{tmp_path / 'a' / 'x.json'},qa:{tmp_path / 'b' / 'x.json'}")


@pytest.mark.parametrize("make, message", [
    (lambda tmp: f"sib200:{sib200(tmp / 'sib.tsv', third='cooking')}", "sib.tsv:4: unknown SIB-200 label 'cooking'"),
    (lambda tmp: f"translate:{pair(tmp, persian_lines=2)}", "eng.txt:3: "),
    (lambda tmp: f"qa:{squad(tmp / 'squad.json', answer='شیراز')}",
     "squad.json: data[0].paragraphs[0].qas[0]: answer text does not match the context"),
])
def test_malformed_task_files_exit_2_naming_the_line(tiny_model_dir, tmp_path, capsys, make, message):
    assert main(["eval", str(tiny_model_dir), "--tasks", make(tmp_path), "--max-new-tokens", "2"]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
