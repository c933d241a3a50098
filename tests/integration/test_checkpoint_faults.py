"""Faults during and after checkpoint saving, through `fatune train` as a user runs it, each compared with
one uninterrupted reference run of the same config (per-step losses in metrics.jsonl):

* SIGKILL at 23 points inside a save (``FATUNE_FAULT_AT``, see ``rundir.fault_point``): between every two
  files, halfway through a file, around the rename and inside rotation; in the first save (nothing to
  resume), the second, and the third (the first that rotates). The rerun of the same command resumes
  from the newest complete checkpoint and ends with the reference's losses.
* Damaged checkpoints (truncated safetensors or optimizer, missing optimizer, bad JSON): set aside as
  ``step-N.corrupt`` with a warning, the previous checkpoint used, the reference's losses reached.
* A full disk (injected ENOSPC) during a save: one line, exit 2, no ``.tmp-step-N``, earlier checkpoints
  whole, and a rerun resumes.
* The tokenizer is saved once per run (``RUN/tokenizer``), not in checkpoints, and still found for them.

Each run is a fork of one "zygote" process that imported torch, transformers and fatune once (it never runs
a tensor op, so forking it is safe): a fresh ``python -m fatune train`` costs seconds of imports on one core,
and these tests start 63 runs. The child runs ``fatune.cli.main(["train", CONFIG])``, the CLI's own entry.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_train_config

from fatune.training.integrity import checkpoint_problem
from fatune.training.rundir import FAULT_ENV, checkpoints, fault_point, rotate

ZYGOTE = r"""
import json, os, sys, traceback
import peft, torch, transformers.trainer  # noqa: F401  imported once; every run is a fork
from fatune import cli
from fatune.training import run  # noqa: F401
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.environ.update(job["env"])
            log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = cli.main(job["argv"])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


class Zygote:
    def __init__(self):
        env = {key: value for key, value in os.environ.items() if key != FAULT_ENV}
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env={**env, "OMP_NUM_THREADS": "1"})

    def train(self, config, fault=None, timeout=300):
        """Run `fatune train CONFIG` (with ``FATUNE_FAULT_AT=fault``): (exit code or -signal, stdout+stderr)."""
        log = config.with_suffix(".log")
        job = {"argv": ["train", str(config)], "log": str(log), "env": {FAULT_ENV: fault} if fault else {}}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"`fatune train` did not finish in {timeout} s: {log.read_text()[-2000:]}"
        return json.loads(self.process.stdout.readline()), log.read_text()

    def close(self):
        self.process.stdin.close()
        self.process.wait(30)


@pytest.fixture(scope="module")
def zygote():
    runner = Zygote()
    yield runner
    runner.close()


def write_config(path, model_dir, out):
    """8 steps, a checkpoint every 2 keeping 2: saves at 2 and 4, then 6 and 8 each rotate one out."""
    config = tiny_train_config(model_dir, out, "lora", "train.max_steps=8", "train.save_steps=2",
                               "train.save_total_limit=2", "train.eval_steps=1000", "data.val_ratio=0",
                               "method.dropout=0.1")  # dropout: the resumed RNG state matters
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True))
    return path


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def names(out):
    return sorted(path.name for path in (out / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def reference(zygote, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    code, log = zygote.train(write_config(out.parent / "run.yaml", tiny_model_dir, out))
    assert code == 0, log
    assert [step for step, _ in losses(out)] == list(range(1, 9))
    assert names(out) == ["step-6", "step-8"]
    return out


def assert_like_reference(out, reference, log, resumed_from):
    """Same per-step losses (one row per step), same checkpoints, nothing partial left behind."""
    if resumed_from:
        assert f"fatune: resuming from step {resumed_from} (" in log, log[-3000:]
    else:
        assert "resuming" not in log, log[-3000:]
    got, expected = losses(out), losses(reference)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert max(abs(a - b) for (_, a), (_, b) in zip(got, expected)) < 1e-5, (got, expected)
    assert [n for n in names(out) if ".corrupt" not in n] == names(reference)


# (fault point, save step): every file boundary of the first and second saves, halfway through files
# (":partial"), the rename, and rotation (the third save, step 6, moves step-2 out).
IN_SAVE = ["begin", "training_args", "model", "model:partial", "optimizer", "scheduler", "rng_state",
           "trainer_state", "fatune_json"]
KILLS = ([(p, 2) for p in IN_SAVE if p != "model:partial"] + [("renamed", 2)]
         + [(p, 4) for p in IN_SAVE + ["optimizer:partial", "trainer_state:partial"]] + [("renamed", 4)]
         + [("rotate-renamed", 6), ("rotated", 6)])


@pytest.mark.parametrize("point,step", KILLS, ids=[f"{p}@{s}" for p, s in KILLS])
def test_a_kill_inside_a_save_resumes_from_the_last_complete_checkpoint(point, step, zygote, reference,
                                                                        tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, out)
    code, log = zygote.train(config, fault=f"save:{point}@{step}")
    assert code == -signal.SIGKILL, log[-3000:]  # the hook fired: the run died at that point
    renamed = point.startswith(("renamed", "rotate"))
    assert (out / "checkpoints" / f"step-{step}").exists() == renamed
    assert (out / "checkpoints" / f".tmp-step-{step}").exists() != renamed
    code, log = zygote.train(config)
    assert code == 0, log[-3000:]
    assert_like_reference(out, reference, log, resumed_from=step if renamed else step - 2)
    assert "damaged" not in log  # only the killed save was incomplete, and it was never a step-N


@pytest.fixture(scope="module")
def three_checkpoints(zygote, tiny_model_dir, tmp_path_factory):
    """A run killed right after renaming step-6 into place, before rotation: step-2, step-4, step-6."""
    out = tmp_path_factory.mktemp("three") / "run"
    code, log = zygote.train(write_config(out.parent / "run.yaml", tiny_model_dir, out), "save:renamed@6")
    assert code == -signal.SIGKILL, log[-3000:]
    assert names(out) == ["step-2", "step-4", "step-6"]
    return out


def copy_run(source, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(".lock"))
    return out, write_config(tmp_path / "run.yaml", tiny_model_dir, out)


def truncate(path):
    os.truncate(path, path.stat().st_size // 2)


DAMAGE = {
    "truncated weights": (lambda d: truncate(d / "adapter_model.safetensors"),
                          "adapter_model.safetensors is truncated"),
    "truncated optimizer": (lambda d: truncate(d / "optimizer.pt"), "optimizer.pt is truncated"),
    "missing optimizer": (lambda d: (d / "optimizer.pt").unlink(), "missing optimizer.pt"),
    "bad trainer_state": (lambda d: (d / "trainer_state.json").write_text('{"global_step": 6,'),
                          "trainer_state.json is not valid JSON"),
    "bad fatune.json": (lambda d: (d / "fatune.json").write_text("{not json"), "fatune.json is not valid JSON"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_used(damage, zygote, reference, three_checkpoints,
                                                                      tiny_model_dir, tmp_path):
    out, config = copy_run(three_checkpoints, tmp_path, tiny_model_dir)
    harm, problem = DAMAGE[damage]
    harm(out / "checkpoints" / "step-6")
    assert checkpoint_problem(out / "checkpoints" / "step-4") is None
    assert problem in checkpoint_problem(out / "checkpoints" / "step-6")
    code, log = zygote.train(config)
    assert code == 0, log[-3000:]
    assert f"checkpoint {out / 'checkpoints' / 'step-6'} is damaged ({problem}" in log
    assert "moved it to step-6.corrupt" in log
    assert_like_reference(out, reference, log, resumed_from=4)
    kept = out / "checkpoints" / "step-6.corrupt"  # kept for inspection; rotation left it alone
    assert problem in checkpoint_problem(kept)
    assert names(out) == ["step-6", "step-6.corrupt", "step-8"]


def test_damage_in_every_newer_checkpoint_falls_back_further_or_to_a_fresh_start(zygote, reference,
                                                                                 three_checkpoints, tiny_model_dir,
                                                                                 tmp_path):
    out, config = copy_run(three_checkpoints, tmp_path, tiny_model_dir)
    root = out / "checkpoints"
    shutil.copytree(root / "step-6", root / "step-6.corrupt")  # left by an earlier failure: not overwritten
    truncate(root / "step-6" / "adapter_model.safetensors")
    (root / "step-4" / "rng_state.pth").unlink()
    code, log = zygote.train(config)
    assert code == 0 and "moved it to step-6.corrupt-2" in log and "moved it to step-4.corrupt" in log, log[-3000:]
    assert_like_reference(out, reference, log, resumed_from=2)
    assert names(out) == ["step-4.corrupt", "step-6", "step-6.corrupt", "step-6.corrupt-2", "step-8"]

    out, config = copy_run(three_checkpoints, tmp_path / "all", tiny_model_dir)
    for _, path in checkpoints(out):
        (path / "scheduler.pt").unlink()
    code, log = zygote.train(config)
    assert code == 0 and "no complete checkpoint is left; training starts again from step 0" in log, log[-3000:]
    assert_like_reference(out, reference, log, resumed_from=0)


@pytest.mark.parametrize("point,step", [("model", 2), ("optimizer", 4), ("rng_state", 4), ("fatune_json", 6)])
def test_a_full_disk_during_a_save_stops_with_one_line_and_the_rerun_resumes(point, step, zygote, reference,
                                                                             tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, out)
    code, log = zygote.train(config, fault=f"save:{point}:enospc@{step}")
    assert code == 2, log[-3000:]
    before = names(out)
    resume = f"resume from step-{step - 2}" if step > 2 else "start again (no checkpoint was saved before this one)"
    line = (f"fatune: error: no space left on device while saving checkpoint step-{step} to "
            f"{out / 'checkpoints' / f'step-{step}'}; free space and rerun the same command to {resume}")
    assert [text for text in log.splitlines() if text.startswith("fatune: error")] == [line], log[-3000:]
    assert "Traceback" not in log
    assert before == {2: [], 4: ["step-2"], 6: ["step-2", "step-4"]}[step]  # no .tmp-step-N left
    assert all(checkpoint_problem(path) is None for _, path in checkpoints(out))
    code, log = zygote.train(config)
    assert code == 0, log[-3000:]
    assert_like_reference(out, reference, log, resumed_from=step - 2)


def test_the_tokenizer_is_saved_once_per_run_and_found_for_checkpoints(reference):
    from fatune import load

    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                       "chat_template.jinja"}
    for _, path in checkpoints(reference):
        assert not tokenizer_files & {f.name for f in path.iterdir()}, path
    assert (reference / "tokenizer" / "tokenizer_config.json").exists()
    assert (reference / "final" / "tokenizer_config.json").exists()  # final/ stays self-contained
    from_checkpoint, from_run = load(str(reference / "checkpoints" / "step-8")), load(str(reference))
    text = "سلام، حالت چطور است؟"
    assert from_checkpoint.tokenizer(text)["input_ids"] == from_run.tokenizer(text)["input_ids"]
    assert from_checkpoint.template.name == from_run.template.name == "gemma"


def test_listing_and_rotation_skip_partial_and_set_aside_folders(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for name in ("step-2", "step-4", "step-6", ".tmp-step-8", ".del-step-1", "step-3.corrupt", "step-5.corrupt-2"):
        (root / name).mkdir(parents=True)
    assert [path.name for _, path in checkpoints(tmp_path)] == ["step-2", "step-4", "step-6"]
    rotate(tmp_path, 1)
    assert names(tmp_path) == [".del-step-1", ".tmp-step-8", "step-3.corrupt", "step-5.corrupt-2", "step-6"]
    monkeypatch.delenv(FAULT_ENV, raising=False)
    fault_point("optimizer", 4)  # no variable: nothing happens
    monkeypatch.setenv(FAULT_ENV, "save:optimizer:enospc@4")
    fault_point("optimizer", 2)  # another step: nothing happens
    fault_point("scheduler", 4)
    with pytest.raises(OSError, match="No space left on device"):
        fault_point("optimizer", 4)


def test_a_full_disk_is_recognized_however_the_writer_reports_it(tmp_path, monkeypatch):
    """torch.save says ``RuntimeError: ... file write failed`` on a full disk: the free space decides."""
    import shutil as shutil_module
    from types import SimpleNamespace

    from fatune.training.trainer import disk_full

    assert disk_full(OSError(28, "No space left on device"), tmp_path)
    assert not disk_full(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: SimpleNamespace(free=4096))
    assert disk_full(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), tmp_path)
