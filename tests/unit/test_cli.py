"""The command line as a user runs it: python -m fatune, data inspect, data prepare."""

import json
import shutil
import subprocess
from pathlib import Path

from conftest import FARSTAIL_TEST, run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_version_and_help():
    from fatune import __version__

    assert run_cli("--version").stdout.strip() == f"fatune {__version__}"
    assert "data" in run_cli("--help").stdout
    assert shutil.which("fatune") and subprocess.run(["fatune", "--version"], capture_output=True).returncode == 0


def test_inspect_sample_with_a_tokenizer_marks_trained_tokens(tiny_tok_dir):
    result = run_cli("data", "inspect", "fatune:sample", "--tokenizer", tiny_tok_dir, "--template", "gemma", "-n", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "conversations: 168" in out and "tokens per conversation: mean" in out
    assert "tokens per Persian word (fertility):" in out and "persian-script share of letters: user" in out
    assert out.count("--- sample") == 2 and "<start_of_turn>model\n⟦" in out and "<end_of_turn>⟧" in out


def test_inspect_json_report(tiny_tok_dir):
    result = run_cli("data", "inspect", FARSTAIL_TEST, "--tokenizer", tiny_tok_dir, "--json", "-n", "0")
    report = json.loads(result.stdout)
    assert report["conversations"] == 1564
    assert report["turns"] == {"system": 1564, "user": 1564, "assistant": 1564}
    assert report["persian_share"]["assistant"] == 1.0 and report["fertility"] > 1


def test_prepare_writes_train_and_val_splits(tmp_path, tiny_tok_dir):
    import datasets

    out = tmp_path / "run"
    result = run_cli("data", "prepare", ROOT / "configs/demo/data.yaml", f"model.tokenizer={tiny_tok_dir}",
                     f"output.dir={out}", env={"FATUNE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    splits = datasets.load_from_disk(str(out / "data"))
    report = json.loads((out / "data" / "report.json").read_text())
    assert len(splits["train"]) == report["train"]["rows"] > 0 and len(splits["val"]) == report["val"]["rows"] > 0
    sample = report["sources"][0]  # the demo mix: the bundled sample first, then the task subsets
    # count: 16 of the sample's 151 training chats; its validation split (10 %) is kept whole
    assert sample["path"] == "fatune:sample" and (sample["train"], sample["val"]) == (16, 17) and len(report["sources"]) == 4


def test_hub_tokenizer_offline_is_one_clear_error(tmp_path):
    result = run_cli("data", "inspect", "fatune:sample", "--tokenizer", "google/gemma-2-2b-it",
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "fatune: error: google/gemma-2-2b-it: could not load a tokenizer" in result.stderr


def test_train_with_a_missing_model_or_data_is_one_line_and_exit_2(tmp_path):
    import yaml

    raw = yaml.safe_load((ROOT / "configs/demo/lora.yaml").read_text())
    raw["data"] = {"path": "fatune:sample", "max_length": 256}  # one source, so data.path can be overridden
    config = tmp_path / "lora.yaml"
    config.write_text(yaml.safe_dump(raw))
    for override, message in [("model.path=/no/such/model", "/no/such/model: no such model directory"),
                              ("data.path=/no/such.jsonl", "/no/such.jsonl: no such file or directory")]:
        result = run_cli("train", config, override, f"output.dir={tmp_path / 'run'}")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("fatune: error:")]
        assert len(errors) == 1 and message in errors[0]


def _subparsers(parser, prefix=()):
    """``(verb path, parser)`` for every verb and sub-verb of ``fatune``."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_no_user_facing_option_points_at_the_developers_shared_folder():
    """``../shared`` exists only beside the developers' checkout: no default or help text may name it."""
    from fatune.cli import build_parser

    for verb, parser in _subparsers(build_parser()):
        for action in parser._actions:
            for text in (action.default, action.help):
                assert "../shared" not in str(text), (verb, action.dest, text)


def test_eval_help_lists_every_task_the_eval_module_runs():
    from fatune.cli import build_parser
    from fatune.eval.run import TASK_FORMS, TASKS

    assert set(TASK_FORMS) == set(TASKS) == {"loss", "fidelity", "farstail", "mc", "sib200", "qa", "translate"}
    verbs = dict(_subparsers(build_parser()))
    tasks_help = next(a.help for a in verbs["eval",]._actions if a.dest == "tasks")
    assert all(form in tasks_help for form in TASK_FORMS.values())
    listed = run_cli("--help").stdout
    assert f"quantitative Persian metrics: {', '.join(TASKS)}" in " ".join(listed.split())


def test_config_help_names_all_six_sections():
    from fatune.cli import build_parser
    from fatune.config import Config

    verbs = dict(_subparsers(build_parser()))
    for verb in (("train",), ("data", "prepare")):
        config_help = next(a.help for a in verbs[verb]._actions if a.dest == "config")
        assert config_help == f"YAML config (sections {', '.join(Config.model_fields)})", verb


def test_export_outtype_choices_and_default_come_from_the_gguf_writer():
    from fatune.cli import build_parser
    from fatune.gguf_export import DEFAULT_OUTTYPE, OUTTYPES

    outtype = next(a for a in dict(_subparsers(build_parser()))["export",]._actions if a.dest == "outtype")
    assert tuple(outtype.choices) == OUTTYPES and DEFAULT_OUTTYPE in OUTTYPES
    assert outtype.default is None and f"(default {DEFAULT_OUTTYPE})" in outtype.help  # export() picks it, not argparse
