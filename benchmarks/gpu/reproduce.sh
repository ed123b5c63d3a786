#!/usr/bin/env bash
# Issue 13's GPU rows, in one short run: the WRN teacher and its G(4) and B(2) students (scratch, KD, AT) on
# real Fashion-MNIST at a longer schedule than the CPU study's 3 epochs, with python -m benchmarks.reproduce, on the
# GPU. Results, the rendered report and the logs go under $OUT; the study is resumable, so a run cut short by
# the device's time limit keeps its finished runs and its checkpoints (under $OUT/work) for the next call.
#
# The GPU machine has no network and no Fashion-MNIST: carry the four IDX files in the ignored data/ folder.
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   device run:  OUT=$OUT EPOCHS=30 bash benchmarks/gpu/reproduce.sh      (carry: data/fashion-mnist)
#   CPU smoke:   DEVICE=cpu EPOCHS=1 SUBSET=512 PY=.venv/bin/python OUT=/tmp/gr bash benchmarks/gpu/reproduce.sh
#
# The paper's schedule is 200 epochs of WRN-40-2; a loaned GPU has about 15 minutes in all, so EPOCHS (default
# 30) and TEACHER (default wrn_16_2, the CPU study's) are set to fit: 7 runs of EPOCHS epochs each.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PY:-python}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-30}
TEACHER=${TEACHER:-wrn_16_2}
DATA_DIR=${DATA_DIR:-data/fashion-mnist}
LIMIT=${LIMIT:-540}                # seconds for the study, inside one device call of at most 600 s
EXTRA=()
[ -n "${SUBSET:-}" ] && EXTRA+=(--subset "$SUBSET" --test-subset "$SUBSET")
{ nvidia-smi 2>/dev/null; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; } \
  > "$OUT/machine.txt" 2>&1
timeout --signal=INT "$LIMIT" $PY -m benchmarks.reproduce --device "$DEVICE" --data-dir "$DATA_DIR" \
    --teacher "$TEACHER" --epochs "$EPOCHS" --only 1,2 --students 'G(4),B(2)' --seeds 1 --quiet "${EXTRA[@]}" \
    --results "$OUT/reproduce_gpu.jsonl" --work "$OUT/work" 2>&1 | tee "$OUT/reproduce.log"
status=${PIPESTATUS[0]}
$PY -m benchmarks.reproduce.report --results "$OUT/reproduce_gpu.jsonl" --out "$OUT/reproduction_gpu.md" \
    --plots "$OUT" 2>&1 | tee -a "$OUT/reproduce.log"
echo "study exit status $status (124: cut at LIMIT=$LIMIT s, the runs finished so far kept; run the same command again to continue)" | tee -a "$OUT/reproduce.log"
exit "$status"
