"""fatune compare without a model: gains over the reference (real ``stats.gains``), like-with-like filling of
missing tasks (``evaluate`` and ``load`` patched), report.json, and the gains table leading report.md/html."""

from __future__ import annotations

import json

import pytest

from fatune.errors import FatuneError
from fatune.eval import report_fill
from fatune.eval.report import compare

BASE = "org/base-model"
IDS = [f"q{i}" for i in range(20)]


def option(hits: list[int]) -> dict:
    return {"accuracy": sum(hits) / len(hits), "accuracy_ci95": [0.1, 0.9], "acc_norm": sum(hits) / len(hits),
            "total": len(hits), "item_ids": IDS[:len(hits)], "per_item": {"accuracy": hits, "acc_norm": hits}}


def fidelity(clean: list[int], degenerate: list[int]) -> dict:
    n = len(clean)
    return {"clean_persian_rate": sum(clean) / n, "clean_persian_rate_ci95": [0.0, 1.0], "persian_share": 0.9,
            "degenerate_rate": sum(degenerate) / n, "hit_limit_rate": 0.0, "echo_rate": 0.0, "n": n,
            "samples": [{"prompt": "سلام، حالت چطور است؟", "answer": "خوبم، ممنون."}],
            "item_ids": [f"p{i}" for i in range(n)],
            "per_item": {"clean_persian": clean, "degenerate": degenerate, "hit_limit": [0] * n, "echo": [0] * n}}


def qa(f1: list[float]) -> dict:
    return {"f1": sum(f1) / len(f1), "f1_ci95": [10.0, 90.0], "exact_match": 50.0, "item_ids": IDS[:len(f1)],
            "per_item": {"f1": f1, "exact_match": [100.0 if v == 100 else 0.0 for v in f1]}}


def metrics(tasks: dict, specs: dict | None = None, limit=20, max_new_tokens=64, batch_size=6) -> dict:
    specs = specs or {key: key for key in tasks}
    return {**tasks, "_meta": {"model": "x", "method": "lora", "tasks": specs,
                               "settings": {"tasks": ",".join(specs.values()), "limit": limit,
                                            "max_new_tokens": max_new_tokens, "batch_size": batch_size}}}


def fake_run(root, name: str, results: dict, precision: str | None = None):
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "eval" / "metrics.json").write_text(json.dumps(results, ensure_ascii=False))
    if precision:
        (run / "final").mkdir()
        (run / "final" / "fatune.json").write_text(json.dumps({"precision": precision}))
    return run


def base_file(root, results: dict):
    path = root / "base.json"
    path.write_text(json.dumps(results, ensure_ascii=False))
    return path


class Spy:
    """Stands in for ``evaluate`` and ``load``: records the calls, answers ``results[target]``."""

    def __init__(self, monkeypatch, results: dict):
        self.evaluated, self.loaded, self.results = [], [], results
        monkeypatch.setattr(report_fill, "evaluate", self.evaluate)
        monkeypatch.setattr(report_fill, "load", self.load)

    def load(self, target, precision=None):
        self.loaded.append((target, precision))
        return f"model:{target}"

    def evaluate(self, target, spec, **kwargs):
        self.evaluated.append((target, spec, kwargs))
        result = self.results[target]
        if isinstance(result, Exception):
            raise result
        key = report_fill.task_key(spec)
        result = {key: result[key]} if key in result else result
        return {**result, "_meta": {"model": target, "method": "base", "settings": {"tasks": spec}}}


@pytest.fixture
def three(tmp_path, monkeypatch):
    """A base model (reference, precomputed) and two runs on the same items: ``lora`` better everywhere,
    ``same`` identical to the base."""
    zeros, ones = [0] * 20, [1] * 20
    base = metrics({"farstail": option(zeros), "fidelity": fidelity(zeros, ones)})
    lora = fake_run(tmp_path, "lora", metrics({"farstail": option(ones), "fidelity": fidelity(ones, zeros)}))
    same = fake_run(tmp_path, "same", base)
    spy = Spy(monkeypatch, {})  # nothing is missing: any evaluation would fail the test (KeyError)
    report = compare([BASE, str(lora), str(same)], tmp_path / "out", precomputed={BASE: base_file(tmp_path, base)})
    return report, spy


def test_report_json_has_the_reference_gains_rows_and_errors(three):
    report, spy = three
    data = json.loads((report.parent / "report.json").read_text())
    assert set(data) == {"reference", "gains", "rows", "errors"} and data["reference"] == BASE
    assert set(data["gains"]) == {"lora", "same"} and not spy.evaluated and not spy.loaded
    gain = data["gains"]["lora"]["farstail/accuracy"]
    assert set(gain) == {"delta", "ci95", "significant", "higher_is_better"}
    assert gain["delta"] == 1 and gain["significant"] and gain["ci95"] == [1, 1] and gain["higher_is_better"]
    same = data["gains"]["same"]["farstail/accuracy"]
    assert same["delta"] == 0 and not same["significant"]
    degenerate = data["gains"]["lora"]["fidelity/degenerate_rate"]
    assert degenerate["delta"] == -1 and degenerate["significant"] and not degenerate["higher_is_better"]
    assert [row["name"] for row in data["rows"]] == [BASE, "lora", "same"]
    assert data["rows"][1]["farstail accuracy"].startswith("1.000 [")
    assert data["errors"] == {"evaluation": {}, "gains": {}}


def test_markdown_opens_with_the_gains_table(three):
    report, _ = three
    lines = report.with_suffix(".md").read_text().splitlines()
    assert lines[:3] == ["# fatune comparison", "", f"## Gains over {BASE}"]
    header = lines[4]
    assert header.startswith("| run | fidelity clean persian rate | fidelity degenerate rate ↓ |")
    assert "farstail accuracy" in header and "fidelity clean persian rate ↓" not in header
    lora = next(line for line in lines if line.startswith("| lora |"))
    assert "**▲ +1.000 [1.000, 1.000]**" in lora  # significant, better (also for degenerate: -1 on a ↓ metric)
    assert lora.count("▲") == 4 and "▼" not in lora  # clean persian, degenerate, farstail accuracy and acc_norm
    same = next(line for line in lines if line.startswith("| same |"))
    assert "+0.000 [0.000, 0.000]" in same and "**" not in same
    scores = lines.index("## Scores")
    assert scores > lines.index(lora) and "0.000 [0.100, 0.900]" in "\n".join(lines[scores:])


def test_html_opens_with_the_gains_table_and_stays_self_contained(three):
    html = three[0].read_text()
    body = html.split("<body>")[1]
    assert body.index("Gains over") < body.index("<h2>Scores") < body.index("<h2>Runs")
    assert '<td class="better"><b>▲ +1.000 [1.000, 1.000]</b></td>' in body
    assert 'dir="rtl"' in body and "http" not in body and body.count("data:image/png;base64,") == 2


def test_a_worse_run_is_marked_down_and_percent_scores_get_one_decimal(tmp_path, monkeypatch):
    Spy(monkeypatch, {})
    ref = fake_run(tmp_path, "ref", metrics({"qa:pquad": qa([100.0] * 10)}))
    worse = fake_run(tmp_path, "worse", metrics({"qa:pquad": qa([0.0] * 5 + [100.0] * 5)}))
    md = compare([str(ref), str(worse)], tmp_path / "out").with_suffix(".md").read_text()
    assert "## Gains over ref" in md  # no base model: the first target
    assert "**▼ -50.0 [" in md and "| qa:pquad f1 | qa:pquad exact match |" in md
    assert "100.0 [10.0, 90.0]" in md  # the scores table, 0-100 scale


def test_reference_by_name_or_path_and_a_bad_one(tmp_path, monkeypatch):
    Spy(monkeypatch, {})
    a = fake_run(tmp_path, "a", metrics({"farstail": option([0] * 20)}))
    b = fake_run(tmp_path, "b", metrics({"farstail": option([1] * 20)}))
    for reference in ("b", str(b), str(b / "final")):
        data = json.loads((compare([str(a), str(b)], tmp_path / "out", reference=reference).parent
                           / "report.json").read_text())
        assert data["reference"] == "b" and data["gains"]["a"]["farstail/accuracy"]["delta"] == -1
    with pytest.raises(FatuneError, match="--reference c: not one of the targets"):
        compare([str(a), str(b)], tmp_path / "out2", reference="c")
    assert not (tmp_path / "out2").exists()


def test_missing_tasks_are_evaluated_once_like_the_holder_and_reused(tmp_path, monkeypatch):
    spec = "qa:/data/pquad.jsonl"
    lora = fake_run(tmp_path, "lora", metrics({"fidelity": fidelity([1] * 4, [0] * 4), "qa:pquad": qa([100.0] * 10)},
                                              {"fidelity": "fidelity", "qa:pquad": spec}, limit=10, max_new_tokens=32,
                                              batch_size=4), precision="bf16")
    other = fake_run(tmp_path, "other", metrics({"fidelity": fidelity([0] * 4, [0] * 4)}, limit=4))
    base = base_file(tmp_path, metrics({"fidelity": fidelity([0] * 4, [1] * 4)}))
    spy = Spy(monkeypatch, {BASE: {"qa:pquad": qa([0.0] * 10)}, str(other): {"qa:pquad": qa([50.0] * 10)}})
    targets, out = [BASE, str(lora), str(other)], tmp_path / "out"
    compare(targets, out, precomputed={BASE: base})
    settings = {"limit": 10, "max_new_tokens": 32, "batch_size": 4}
    assert spy.loaded == [(BASE, "bf16"), (str(other), None)]  # once per target; the base in the runs' precision
    assert [(t, s, {k: v for k, v in kw.items() if k in settings}) for t, s, kw in spy.evaluated] == [
        (BASE, spec, settings), (str(other), spec, settings)]
    assert spy.evaluated[0][2]["chat_model"] == f"model:{BASE}"
    data = json.loads((out / "report.json").read_text())
    assert data["gains"]["lora"]["qa:pquad/f1"]["delta"] == 100 and data["gains"]["other"]["qa:pquad/f1"]["delta"] == 50
    stored = json.loads((other / "eval" / "metrics.json").read_text())  # a run keeps its merged metrics
    assert set(stored) == {"fidelity", "qa:pquad", "_meta"}
    assert stored["_meta"]["filled"]["qa:pquad"] == {"spec": spec, "settings": settings, "from": "lora"}
    assert "qa:pquad" in json.loads((out / "metrics" / "org-base-model.json").read_text())  # a base: in the report dir

    compare(targets, out, precomputed={BASE: base})  # a second compare reuses what was computed
    assert len(spy.evaluated) == 2 and len(spy.loaded) == 2

    lora_metrics = json.loads((lora / "eval" / "metrics.json").read_text())  # the holder re-evaluated with more items
    lora_metrics["_meta"]["settings"]["limit"] = 20
    (lora / "eval" / "metrics.json").write_text(json.dumps(lora_metrics))
    compare(targets, out, precomputed={BASE: base})
    assert [kw["limit"] for _, _, kw in spy.evaluated[2:]] == [20, 20]  # stale fills are redone


def test_a_failed_evaluation_is_na_with_its_reason(tmp_path, monkeypatch):
    lora = fake_run(tmp_path, "lora", metrics({"farstail": option([1] * 20), "fidelity": fidelity([1] * 4, [0] * 4)}))
    spy = Spy(monkeypatch, {BASE: RuntimeError("out of memory")})
    base = base_file(tmp_path, metrics({"fidelity": fidelity([0] * 4, [0] * 4)}))
    report = compare([BASE, str(lora)], tmp_path / "out", precomputed={BASE: base})
    md = report.with_suffix(".md").read_text()
    assert len(spy.evaluated) == 1 and "n/a (RuntimeError: out of memory)" in md
    data = json.loads((report.parent / "report.json").read_text())
    assert data["errors"]["evaluation"] == {BASE: {"farstail": "RuntimeError: out of memory"}}
    assert data["gains"]["lora"]["fidelity/clean_persian_rate"]["significant"]


def test_gains_need_the_same_items(tmp_path, monkeypatch):
    Spy(monkeypatch, {})
    a = fake_run(tmp_path, "a", metrics({"farstail": option([0] * 20)}))
    b = fake_run(tmp_path, "b", metrics({"farstail": option([1] * 10)}))
    report = compare([str(a), str(b)], tmp_path / "out")
    data = json.loads((report.parent / "report.json").read_text())
    assert "different items" in data["errors"]["gains"]["b"]["farstail"]
    assert "n/a (the results cover different items" in report.with_suffix(".md").read_text()


def test_a_target_with_no_metrics_gets_loss_and_fidelity(tmp_path, monkeypatch):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    loss = {"loss": {"loss": 2.0, "bits_per_byte": 1.0}}
    spy = Spy(monkeypatch, {str(run): {"fidelity": fidelity([1] * 4, [0] * 4), **loss},
                            BASE: {"fidelity": fidelity([0] * 4, [0] * 4), **loss}})
    compare([BASE, str(run)], tmp_path / "out", limit=3, max_new_tokens=7)
    calls = {(t, s): kw for t, s, kw in spy.evaluated}
    assert set(calls) == {(BASE, "loss"), (BASE, "fidelity"), (str(run), "loss"), (str(run), "fidelity")}
    assert calls[(BASE, "loss")]["loss_run"] == str(run)  # the base model's loss on the run's validation split
    assert calls[(str(run), "fidelity")]["limit"] == 3 and calls[(str(run), "fidelity")]["max_new_tokens"] == 7


def test_cli_passes_the_reference(monkeypatch, tmp_path):
    from fatune import cli
    from fatune.eval import report

    seen = {}
    monkeypatch.setattr(report, "compare", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs)
                        or tmp_path / "report.html")
    assert cli.main(["compare", "a", "b", "--out", str(tmp_path), "--reference", "b"]) == 0
    assert seen["kwargs"]["reference"] == "b" and seen["args"][0] == ["a", "b"]


def test_task_setup_from_metrics_written_before_meta_tasks():
    old = {"farstail": option([1] * 4), "_meta": {"settings": {"tasks": "loss,farstail:/x/test.tsv", "limit": 4,
                                                                "max_new_tokens": None, "batch_size": 2}}}
    assert report_fill.setup_of(old, "farstail") == ("farstail:/x/test.tsv",
                                                     {"limit": 4, "max_new_tokens": None, "batch_size": 2})
    assert report_fill.setup_of({"farstail": option([1] * 4)}, "farstail") is None  # nothing says: never guessed
