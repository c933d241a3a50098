"""fatune eval, compare and demo end to end on tiny models."""

import json
import math

import pytest
import torch
from conftest import FARSTAIL_TEST, run_cli, tiny_train_config, write_jsonl

from fatune.eval.run import evaluate
from fatune.generation import load


def test_loss_fidelity_farstail_and_mc_with_limit(tiny_runs, tmp_path):
    mc = write_jsonl(tmp_path / "quiz.jsonl", [
        {"question": "پایتخت ایران کجاست؟", "candidates": ["تهران", "کابل", "دوشنبه"], "answer": 1},
        {"system": "کوتاه پاسخ بده.", "question": "۲+۲ چند می‌شود؟", "candidates": ["سه", "چهار"], "answer": 2}])
    out = tmp_path / "metrics.json"
    results = evaluate(str(tiny_runs["lora"]), f"loss,fidelity,farstail:{FARSTAIL_TEST},mc:{mc}",
                       limit=3, max_new_tokens=8, out=out)
    assert set(results) == {"loss", "fidelity", "farstail", "mc:quiz", "_meta"}
    loss = results["loss"]
    assert loss["rows"] <= 3 and loss["bits_per_byte"] > 0 and math.isclose(loss["perplexity"], math.exp(loss["loss"]),
                                                                             rel_tol=1e-3)
    fidelity = results["fidelity"]
    assert fidelity["n"] == 3 and len(fidelity["samples"]) == 3
    for key in ("persian_share", "mostly_persian_rate", "empty_rate", "echo_rate", "degenerate_rate",
                "hit_limit_rate", "clean_persian_rate"):
        assert 0 <= fidelity[key] <= 1
    farstail = results["farstail"]
    assert farstail["total"] == 3 and 0 <= farstail["accuracy"] <= 1 and len(farstail["accuracy_ci95"]) == 2
    assert set(farstail["confusion"]) == {"e", "n", "c"} and 0 <= farstail["generated_exact_match"] <= 1
    assert results["mc:quiz"]["total"] == 2
    assert json.loads(out.read_text())["_meta"]["settings"]["limit"] == 3
    assert (tiny_runs["lora"] / "eval" / "metrics.json").exists()  # a run dir also keeps its metrics


def test_loss_items_pair_only_rows_with_the_same_tokens(tiny_runs, tmp_path):
    from fatune.eval import stats

    # Two runs on the same data share a validation split: the same item ids, so their losses pair.
    lora, full = (evaluate(str(tiny_runs[m]), "loss", limit=3)["loss"] for m in ("lora", "full"))
    assert lora["item_ids"] == full["item_ids"] and len(lora["item_ids"]) == 3
    assert set(stats.gains(lora, full, "loss")) == {"bits_per_byte"}
    # Rows at the same positions of different data are different items: ids used to be the row index alone,
    # and compare paired the base model's loss on one run's split with another run's loss on its own.
    chats = [[{"role": "user", "content": f"پرسش {i}"}, {"role": "assistant", "content": f"پاسخ {i}"}] for i in range(3)]
    other = [[m, {"role": "assistant", "content": a["content"] + " دیگر"}] for m, a in chats]
    first, second = (write_jsonl(tmp_path / name, [{"messages": c} for c in rows])
                     for name, rows in (("a.jsonl", chats), ("b.jsonl", other)))
    a, b = (evaluate(str(tiny_runs["lora"]), f"loss:{path}")["loss"] for path in (first, second))
    assert [i.split(":")[0] for i in a["item_ids"]] == [i.split(":")[0] for i in b["item_ids"]] == ["1", "2", "3"]
    with pytest.raises(ValueError, match="different items"):
        stats.gains(a, b, "loss")


def test_option_scores_are_the_summed_answer_token_logprobs(tiny_runs):
    from fatune.data import render
    from fatune.eval.choice import option_loglikelihoods

    model = load(str(tiny_runs["full"]))
    prompt = [{"role": "user", "content": "سلام"}]
    scores = option_loglikelihoods(model, [prompt], [["درود", "خداحافظ"]])[0]
    for option, score in zip(["درود", "خداحافظ"], scores):
        sample = render(prompt + [{"role": "assistant", "content": option}], model.tokenizer, model.template)
        with torch.no_grad():
            logprobs = torch.log_softmax(model.model(input_ids=torch.tensor([sample["input_ids"]])).logits[0], -1)
        expected = sum(logprobs[i - 1, t].item() for i, (t, l) in enumerate(zip(sample["input_ids"], sample["labels"]))
                       if l != -100)
        assert math.isclose(score, expected, rel_tol=1e-4)


def test_ptuning_scoring_skips_the_virtual_positions(tiny_runs):
    from fatune.eval.choice import option_loglikelihoods

    model = load(str(tiny_runs["ptuning"]))
    scores = option_loglikelihoods(model, [[{"role": "user", "content": "سلام"}]] * 2, [["الف", "ب"], ["ب", "الف"]],
                                   batch_size=1)
    assert scores[0] == pytest.approx(scores[1][::-1], rel=1e-5)  # same options, same scores, any order


@pytest.mark.parametrize("tasks, message", [("bleu", "unknown eval task 'bleu'"), ("mc", "the mc task needs a file")])
def test_bad_task_lists_are_one_line(tiny_runs, tasks, message):
    result = run_cli("eval", tiny_runs["lora"], "--tasks", tasks)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_bad_mc_file_names_the_line(tiny_runs, tmp_path):
    mc = write_jsonl(tmp_path / "bad.jsonl", [{"question": "x", "candidates": ["a", "b"], "answer": 1},
                                             {"question": "y", "candidates": ["a", "b"], "answer": 3}])
    result = run_cli("eval", tiny_runs["lora"], "--tasks", f"mc:{mc}")
    assert result.returncode == 2 and f"{mc}:2: answer must be a 1-based index" in result.stderr


def test_compare_two_runs_and_a_base(tiny_runs, tiny_model_dir, tmp_path):
    from fatune.eval.report import compare

    report = compare([str(tiny_model_dir), str(tiny_runs["lora"]), str(tiny_runs["ptuning"])], tmp_path / "report",
                     limit=2, max_new_tokens=6)
    md = (tmp_path / "report" / "report.md").read_text()
    html = report.read_text()
    assert md.count("\n| ") >= 4  # header + 3 rows
    assert md.startswith(f"# fatune comparison\n\n## Gains over {tiny_model_dir}\n")  # the base model is the reference
    runs = md[md.index("## Runs"):].splitlines()
    cells = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    header, base = cells(runs[2]), cells(next(line for line in runs if line.startswith(f"| {tiny_model_dir} |")))
    assert any(line.startswith("| lora |") for line in runs) and any(line.startswith("| ptuning |") for line in runs)
    # Like with like: the base model's loss is scored too (on the first run's validation split).
    assert not base[header.index("val loss")].startswith("n/a") and not base[header.index("Persian (clean)")].startswith("n/a")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["reference"] == str(tiny_model_dir) and set(data["gains"]) == {"lora", "ptuning"}
    assert set(data["errors"]["evaluation"]) == set()
    assert (tmp_path / "report" / "quality.png").stat().st_size > 0
    assert (tmp_path / "report" / "loss_curves.png").stat().st_size > 0
    assert html.count("data:image/png;base64,") == 2 and 'dir="rtl"' in html and "http" not in html.split("<body>")[1]
    assert "Side-by-side answers" in md and md.count("**lora**:") == md.count("\n### ") >= 2  # one per prompt


def test_demo_pipeline_at_tiny_scale(tiny_model_dir, tmp_path):
    from fatune.demo import run_demo

    from fatune.demo import DEMO_SOURCES, DEMO_TASKS

    # The demo's own bundled data and tasks, at tiny scale: a few conversations per source, 2 items per task.
    sources = [{"path": source["path"], "count": 4} for source in DEMO_SOURCES]
    tasks = [(spec, 2, 4) for spec, _, _ in DEMO_TASKS]
    report = run_demo(tmp_path / "demo", steps=2, model=str(tiny_model_dir), max_length=128, tasks=tasks,
                      sources=sources)
    md = report.with_suffix(".md").read_text()
    assert md.index("Gains over") < md.index("## Runs")  # the report opens with the gains
    gains = json.loads(report.with_name("report.json").read_text())["gains"]
    assert set(gains) == {"ptuning", "lora", "qlora", "embed_head"}
    task_keys = {"sib200:test", "qa:heldout", "translate:eng-US", "fidelity", "loss"}
    assert {key.split("/")[0] for key in gains["lora"]} == task_keys
    runs = md[md.index("## Runs"):]
    for method in ("ptuning", "lora", "qlora", "embed_head"):
        assert f"| {method} |" in runs and (tmp_path / "demo" / method / "train_summary.json").exists()
    assert "n/a" not in next(line for line in runs.splitlines() if line.startswith("| ptuning |"))  # every metric


def test_farstail_without_a_path_fails_offline_with_one_clear_line(tiny_runs, tmp_path, monkeypatch):
    from fatune.errors import FatuneError
    from fatune.eval import tasks

    monkeypatch.setenv("FATUNE_CACHE", str(tmp_path))  # no cached copy
    monkeypatch.setattr(tasks, "farstail_url", lambda: "http://127.0.0.1:9/Test-word.csv")  # nothing listens
    with pytest.raises(FatuneError, match="could not download the FarsTail test set") as raised:
        evaluate(str(tiny_runs["lora"]), "farstail", limit=2)
    # it points at the bundled copy and a placeholder path, never at a folder only the developers have
    assert "farstail:fatune:tasks/farstail/test.tsv" in str(raised.value) and "farstail:path/to/" in str(raised.value)
    assert "../shared" not in str(raised.value)


def test_report_says_when_farstail_was_skipped(tiny_runs, tmp_path):
    from fatune.eval.report import compare

    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"farstail": {"skipped": "farstail: could not download"}}))
    md = compare([str(tiny_runs["lora"])], tmp_path / "r", limit=1, max_new_tokens=4,
                 precomputed={str(tiny_runs["lora"]): metrics}).with_suffix(".md").read_text()
    assert "n/a (skipped: farstail: could not download)" in md


def _spy_fused_head(monkeypatch) -> list:
    """Count the fused head's calls (the installed forward looks the function up on every call)."""
    from fatune.training import head

    calls, original = [], head.fused_head_loss_sum

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(head, "fused_head_loss_sum", counted)
    return calls


@pytest.mark.parametrize("method", ["lora", "qlora", "ptuning", "embed_head", "full"])
def test_loss_task_fused_head_scores_like_full_logits(method, tiny_runs, monkeypatch):
    """Held-out loss through the fused head (no ``tokens x vocab`` logits) equals the full-logits scoring,
    P-Tuning's virtual tokens and PEFT wrappers included."""
    from fatune.eval import tasks

    model = load(str(tiny_runs[method]))
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "fused_head_for", lambda model: False)
        full = tasks.loss_task(model, tiny_runs[method], limit=4)
    calls = _spy_fused_head(monkeypatch)
    fused = tasks.loss_task(model, tiny_runs[method], limit=4)
    assert len(calls) == fused["rows"] == full["rows"] > 0  # one fused pass per row, no full-logits pass
    assert (fused["tokens"], fused["bytes"]) == (full["tokens"], full["bytes"])
    for key in ("loss", "bits_per_byte"):
        assert fused[key] == pytest.approx(full[key], abs=1e-4)


def test_loss_task_falls_back_to_full_logits_where_the_fused_head_declines(tiny_runs, monkeypatch):
    from fatune.eval import tasks

    model = load(str(tiny_runs["lora"]))
    expected = tasks.loss_task(load(str(tiny_runs["lora"])), tiny_runs["lora"], limit=2)
    model.model.get_output_embeddings().register_forward_hook(lambda module, args, output: None)  # as embed_head rows
    calls = _spy_fused_head(monkeypatch)
    result = tasks.loss_task(model, tiny_runs["lora"], limit=2)
    assert not calls and result["loss"] == pytest.approx(expected["loss"], abs=1e-4)


def test_loss_task_fused_head_in_a_bf16_run(tiny_model_dir, tmp_path, monkeypatch):
    """A bf16 run loads with a bf16 base, an fp32 trained matrix and its forward under autocast; the fused
    path (which calls the inner model directly) must run under that autocast too."""
    from fatune import train
    from fatune.eval import tasks

    run = train(tiny_train_config(tiny_model_dir, tmp_path / "run", "embed_head", "train.max_steps=1",
                                  "train.precision=bf16")).out
    with monkeypatch.context() as patched:
        patched.setattr(tasks, "fused_head_for", lambda model: False)
        full = tasks.loss_task(load(str(run)), run, limit=3)
    calls = _spy_fused_head(monkeypatch)
    fused = tasks.loss_task(load(str(run)), run, limit=3)
    assert calls and fused["loss"] == pytest.approx(full["loss"], abs=1e-3)  # bf16 logits round differently


def test_a_checkpoint_is_evaluated_and_compared_like_a_run(tiny_model_dir, tmp_path):
    """Learning curves: `fatune eval RUN/checkpoints/step-N` scores the run's own validation split, keeps its
    metrics beside the checkpoint, and `compare` names it step-N; a second eval adds to the kept metrics."""
    from fatune import train
    from fatune.eval.report import compare

    run = train(tiny_train_config(tiny_model_dir, tmp_path / "run", "lora")).out
    checkpoint = run / "checkpoints" / "step-4"  # the last step: the same weights as final/
    at_checkpoint = evaluate(str(checkpoint), "loss", limit=3)
    at_final = evaluate(str(run), "loss", limit=3)
    assert at_checkpoint["loss"]["rows"] == at_final["loss"]["rows"] == 3
    assert at_checkpoint["loss"]["loss"] == pytest.approx(at_final["loss"]["loss"], abs=1e-4)
    evaluate(str(checkpoint), "fidelity", limit=2, max_new_tokens=4)
    kept = json.loads((checkpoint / "eval" / "metrics.json").read_text())
    assert kept["loss"] == at_checkpoint["loss"] and kept["fidelity"]["n"] == 2  # both evaluations kept
    compare([str(run), str(checkpoint)], tmp_path / "report", reference=str(run))
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["reference"] == "run" and set(data["gains"]) == {"step-4"}
    assert data["gains"]["step-4"]["loss/bits_per_byte"]["delta"] == pytest.approx(0, abs=1e-3)
