"""The seed's Gemma2-2b-it configs, unchanged but for what an offline CPU needs, train two steps at
Gemma 2 2B's real widths: bf16 (what a bf16 GPU runs) and the configs' own fp16 (what a T4 runs).

The model is random, 2 layers deep, with 2B's hidden size, heads, head dim, MLP width, soft-capping
and sliding window, and Gemma 3's 262,144-token vocabulary (the offline tokenizer's): every tensor a
GPU run touches has its real size except the depth. Gradient checkpointing, the 4-bit settings
(nf4, compute dtype float16) and the optimizer choice stay as the configs say; bf16 also keeps their
batch size and gradient accumulation, fp16 runs one short row per step (``PRECISIONS``). Rows are at
most 64 tokens: bitsandbytes' CPU 4-bit path is slow in any dtype, and a CPU without fp16 hardware
multiplies fp16 matrices tens of times slower than fp32 (65x for 1024x1024 on the AVX512-BF16 dev
machine). That is far inside the 4,096-token sliding window: the window mask itself is not exercised
here (the tiny-model tests cover it at window 16).

fp16 runs start with the gradient scaler's 65,536 scale, whose first steps overflow and are skipped
(``grad_norm`` NaN, the learning rate stays 0): in two steps they prove that fp16 forward, backward,
loss scaling, evaluation, saving and loading work, not that an fp16 update does.

Memory: the model is ~760M parameters (~3 GB fp32), 604M of them the tied embedding. The other
methods peak at ~6 GiB RSS. embed_head trains that whole matrix with AdamW and peaks at 17.3 GiB in
bf16: about seven matrices' worth (the fp32 weight, its gradient summed from the embedding and the
head and accumulated over micro-batches, two AdamW moments, a bf16 copy under autocast; 4.9 and
8.9 GiB at 65,536 and 131,072 rows). fp16 peaks at ~11 GiB only because its skipped steps never
create the AdamW state. It runs only where that much memory is free (on the shared 24 GB dev
machine the OOM killer stopped it once at 18 GB).
"""

import json
import math
from pathlib import Path

import pytest
import torch

from fatune import train
from fatune.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "gemma2-2b-it"
METHODS = ("lora", "qlora", "ptuning", "embed_head")
# What a bf16 GPU runs (the configs' header comments say so) and the configs' own T4 setting.
# fp16 keeps the configs' precision but runs one short row per step: CPUs without fp16 hardware (this
# one: AVX512-BF16 only) multiply fp16 matrices tens of times slower than fp32, and a 2-step fp16 run
# with the configs' batch and accumulation took 11 minutes (qlora). The point here is that every fp16
# code path runs, not how fast.
PRECISIONS = {"bf16": ["train.precision=bf16", "train.force_fp16=false"],
              "fp16": ["train.batch_size=1", "train.grad_accum=1", "data.max_length=48"]}


EMBED_HEAD_GIB = 20  # ~17 GiB peak, plus margin
# What an embed_head run at 2B width writes: a checkpoint of the fp32 model (~3 GB) with its AdamW state
# for the 604M-row matrix (~4.8 GB), then final/ (~3 GB), plus margin. A CI run on a dev machine whose
# disk had ~20 GiB free filled it here, and fatune's DiskFullError rightly stopped the run (2026-11-30).
EMBED_HEAD_DISK_GIB = 16


def require_resources(method: str, out: Path) -> None:
    import shutil

    import psutil

    if method != "embed_head":
        return
    available = psutil.virtual_memory().available / 2**30
    if not torch.cuda.is_available() and available < EMBED_HEAD_GIB:
        pytest.skip(f"embed_head at 2B width peaks at ~17 GiB; {available:.0f} GiB free here "
                    f"(needs {EMBED_HEAD_GIB})")
    disk = shutil.disk_usage(out).free / 2**30
    if disk < EMBED_HEAD_DISK_GIB:
        pytest.skip(f"embed_head at 2B width writes ~11 GB of checkpoint and final/; {disk:.0f} GiB of disk "
                    f"free at {out} (needs {EMBED_HEAD_DISK_GIB})")


@pytest.fixture(scope="module")
def gemma2_2b_dir(gemma_tok, tmp_path_factory):
    """The 2-layer 2B-shaped Gemma 2, saved once with the real Gemma 3 tokenizer beside it."""
    from fatune.testing import gemma2_2b_shaped

    path = tmp_path_factory.mktemp("gemma2_2b_shaped")
    model = gemma2_2b_shaped(len(gemma_tok), layers=2)
    model.save_pretrained(path)
    gemma_tok.save_pretrained(path)
    del model
    return path


def seed_config(method: str, precision: str, model_dir: Path, out: Path):
    """``configs/gemma2-2b-it/METHOD.yaml`` with only the offline-CPU overrides."""
    config = load_config(CONFIGS / f"{method}.yaml", [
        f"model.path={model_dir}",
        "data.path=fatune:sample",  # the configs' hub dataset is unreachable offline
        "data.max_length=64", "data.fraction=0.25", "data.cache=false",  # 29 train rows, 2 val rows
        "train.max_steps=2", "train.save_steps=2", "train.eval_steps=2", "train.logging_steps=1",
        "eval.max_rows=2", f"output.dir={out}", *PRECISIONS[precision]])
    assert config.train.gradient_checkpointing  # part of what must not fail on a GPU
    return config


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", METHODS)
def test_seed_config_trains_two_steps_at_2b_width(method, precision, gemma2_2b_dir, tmp_path):
    from fatune.generation import load

    require_resources(method, tmp_path)
    config = seed_config(method, precision, gemma2_2b_dir, tmp_path / "run")
    result = train(config)
    summary = json.loads((result.out / "train_summary.json").read_text())
    del result  # the loaded final/ below would otherwise sit beside the trained model
    assert summary["steps"] == 2 and summary["method"] == method and summary["precision"] == precision
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row[key] for row in logged for key in ("loss", "eval_loss") if key in row]
    assert len(losses) >= 3 and all(math.isfinite(value) for value in losses), logged
    assert math.isfinite(summary["final_train_loss"]) and math.isfinite(summary["final_eval_loss"])
    print(f"{method}/{precision}: losses {losses}, peak RSS {summary['peak_memory_bytes'] / 2**30:.1f} GiB, "
          f"{summary['wall_seconds']} s")

    chat = load(str(tmp_path / "run"))
    ids = torch.tensor([gemma_ids(chat.tokenizer)])
    with torch.no_grad():
        logits = chat.model(input_ids=ids, logits_to_keep=1).logits
    assert torch.isfinite(logits).all()


def gemma_ids(tokenizer) -> list[int]:
    return tokenizer("<start_of_turn>user\nسلام<end_of_turn>\n<start_of_turn>model\n")["input_ids"]
