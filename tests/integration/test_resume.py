"""Reliability as a user meets it, through the CLI: SIGKILL and rerun gives the same losses as an
uninterrupted run; Ctrl-C saves a checkpoint; two processes (DDP on CPU, gloo) write one run."""

import json
import os
import signal
import subprocess
import sys
import time

import yaml
from conftest import tiny_train_config


def write_config(path, model_dir, out, *overrides):
    config = tiny_train_config(model_dir, out, "lora", "train.max_steps=40", "train.save_steps=4",
                               "train.eval_steps=1000", "data.val_ratio=0", "method.dropout=0.1", *overrides)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True))
    return path


def _default_sigint() -> None:
    # A test run started in the background by a non-interactive shell (`pytest ... &`, as CI scripts may do)
    # ignores SIGINT, children inherit that, and Python then installs no KeyboardInterrupt handler: restore
    # the default so the child meets Ctrl-C as a user's terminal would deliver it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fatune_train(config, *extra, **popen):
    return subprocess.Popen([sys.executable, "-m", "fatune", "train", str(config), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **popen)


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"finished before {path.name} appeared: {process.communicate()}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.005)


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}, [r["step"] for r in rows if "loss" in r]


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    reference = tmp_path / "reference"
    done = fatune_train(write_config(tmp_path / "a.yaml", tiny_model_dir, reference))
    assert done.wait(300) == 0, done.communicate()

    out = tmp_path / "killed"
    config = write_config(tmp_path / "b.yaml", tiny_model_dir, out)
    process = fatune_train(config)
    wait_for(out / "checkpoints" / "step-8", process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL and not (out / "train_summary.json").exists()

    rerun = subprocess.run([sys.executable, "-m", "fatune", "train", str(config)], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "fatune: resuming from step" in rerun.stdout
    expected, _ = losses(reference)
    got, steps = losses(out)
    assert steps == sorted(set(steps)) == list(range(1, 41))  # one row per step: the dead run's extra rows dropped
    assert max(abs(expected[s] - got[s]) for s in expected) < 1e-4


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes_from_it(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    # 400 steps (~10 s): with 40 the tiny run could finish (~1 s) before a busy machine delivered the signal.
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, out, "train.save_steps=1000", "train.max_steps=400")
    process = fatune_train(config)
    wait_for(out / "metrics.jsonl", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; saved checkpoint step-" in stdout
    saved = sorted((out / "checkpoints").glob("step-*"))
    assert len(saved) == 1
    rerun = subprocess.run([sys.executable, "-m", "fatune", "train", str(config)], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0 and f"resuming from step {saved[0].name.split('-')[1]}" in rerun.stdout


def test_two_processes_on_cpu_write_one_run_with_world_size_2(tmp_path, tiny_model_dir):
    out = tmp_path / "ddp"
    config = write_config(tmp_path / "d.yaml", tiny_model_dir, out, "train.max_steps=4", "data.val_ratio=0.1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29533", "-m", "fatune", "train", str(config)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (out / "final" / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4"]
