"""``fatune eval`` run twice on a run keeps both evaluations, each with the settings it ran with."""

from fatune.eval.report_fill import setup_of
from fatune.eval.run import merge_metrics


def metrics(tasks: dict, limit, batch_size=6):
    return {**{key: {"n": limit, "value": value} for key, (spec, value) in tasks.items()},
            "_meta": {"model": "run", "tasks": {key: spec for key, (spec, _) in tasks.items()},
                      "settings": {"tasks": ",".join(spec for spec, _ in tasks.values()), "limit": limit,
                                   "max_new_tokens": None, "batch_size": batch_size}}}


def test_a_second_eval_adds_its_tasks_and_keeps_the_others_with_their_settings():
    first = metrics({"qa:heldout": ("qa:h.json", 1.0), "fidelity": ("fidelity", 2.0)}, limit=100, batch_size=12)
    second = metrics({"fidelity": ("fidelity", 3.0), "sib200:test": ("sib200:t.tsv", 4.0)}, limit=8)
    merged = merge_metrics(first, second)
    assert {k: v["value"] for k, v in merged.items() if k != "_meta"} == {
        "qa:heldout": 1.0, "fidelity": 3.0, "sib200:test": 4.0}
    assert setup_of(merged, "qa:heldout") == ("qa:h.json", {"limit": 100, "max_new_tokens": None, "batch_size": 12})
    assert setup_of(merged, "fidelity") == ("fidelity", {"limit": 8, "max_new_tokens": None, "batch_size": 6})
    assert setup_of(merged, "sib200:test") == ("sib200:t.tsv", {"limit": 8, "max_new_tokens": None, "batch_size": 6})


def test_nothing_earlier_or_every_task_redone_is_the_new_result_as_it_is():
    new = metrics({"fidelity": ("fidelity", 3.0)}, limit=8)
    assert merge_metrics({}, new) == new
    assert merge_metrics(metrics({"fidelity": ("fidelity", 1.0)}, limit=100), new) == new


def test_filled_records_of_kept_tasks_survive():
    first = metrics({"qa:heldout": ("qa:h.json", 1.0)}, limit=100)
    first["_meta"]["filled"] = {"qa:heldout": {"spec": "qa:h.json", "settings": {"limit": 50}, "from": "base"}}
    merged = merge_metrics(first, metrics({"fidelity": ("fidelity", 3.0)}, limit=8))
    assert merged["_meta"]["filled"] == first["_meta"]["filled"]
    assert setup_of(merged, "qa:heldout") == ("qa:h.json", {"limit": 50})
