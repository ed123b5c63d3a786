#!/usr/bin/env bash
# One short GPU run (about 5-8 minutes on one H200) that exercises what CPU CI cannot: cheapen on the GPU,
# distil with AMP (bf16) + channels_last + torch.compile, profile with CUDA-event timing, the throughput of
# cheapconv.distill against the plain loop, a compress candidate library built on the GPU, and ONNX Runtime's GPU
# execution providers (float32 and int8, where CUDA's is there; the step records which are). Figures go under
# $OUT (default: gpu-out/), logs included.
#
#   OUT=/tmp/gpu bash benchmarks/gpu/check.sh
#
# The GPU machine has torch, torchvision, timm, typer and rich but no network and no Fashion-MNIST, so cheapconv
# runs from this checkout (no install; `python -m` from the repository root finds cheapconv, the command line's
# cli/ package and the benchmarks) on synthetic data.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PY=${PY:-python}
CLI="$PY -m cli.main"
DATA=${DATA:-synthetic:3x32x32:10:8192}
DEVICE=${DEVICE:-cuda}            # DEVICE=cpu DATA=synthetic:3x32x32:10:256 STEPS=3: a local smoke test of this script
STEPS=${STEPS:-40}                 # and WARMUP=1 ROUNDS=1 PY=.venv/bin/python
status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, keep going on failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  else echo "   FAILED ($((SECONDS - t0)) s): $(tail -n 3 "$OUT/$name.log" | tr '\n' ' ')" | tee -a "$OUT/summary.txt"; status=1; fi
}

{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; } \
  > "$OUT/machine.txt" 2>&1
step cheapen      $CLI cheapen wrn_16_2 --block 'G(4)' -o "$WORK/student.pt"
step cheapen-r50  $CLI cheapen resnet50 --block 'B(2)' -o "$WORK/r50-b2.pt"
step teacher      $CLI train wrn_16_2 --data $DATA --epochs 1 --device $DEVICE --precision bf16 --channels-last \
                      --no-progress -o "$WORK/teacher.pt"
step distill-amp  $CLI distill -t "$WORK/teacher.pt" -s "$WORK/student.pt" --data $DATA --epochs 1 --device $DEVICE \
                      --precision bf16 --channels-last --no-progress -o "$WORK/distilled.pt"
step distill-compile $CLI distill -t "$WORK/teacher.pt" -s "$WORK/student.pt" --data $DATA --max-steps $STEPS \
                      --device $DEVICE --precision bf16 --channels-last --compile --no-progress -o "$WORK/compiled.pt"
step evaluate     $CLI evaluate "$WORK/distilled.pt" --data $DATA --device $DEVICE --json
step profile-cuda $CLI profile "$WORK/r50-b2.pt" --device $DEVICE --json "$OUT/profile_r50_b2_cuda.json"
step compare-cuda $CLI compare resnet50 "$WORK/r50-b2.pt" --device $DEVICE --json "$OUT/compare_r50_cuda.json"
step throughput   $PY -m benchmarks.perf.distill_throughput --device $DEVICE --data $DATA --threads 4 --steps $STEPS \
                      --warmup ${WARMUP:-5} --rounds ${ROUNDS:-3} --compile --json "$OUT/throughput_cuda.json"
# compress's candidate library on the GPU: every option fitted and timed with CUDA events (its build time is the
# figure; the selection needs scipy, which the GPU machine may lack, so the library is built alone)
step compress-library $PY -c "
import json, sys, time, torch, cheapconv
from cheapconv.data import get_dataset
teacher = cheapconv.load('$WORK/teacher.pt').to('$DEVICE')
data = get_dataset('$DATA', 'train', augment=False)
t0 = time.perf_counter()
n = len(data)
lib = cheapconv.build_library(teacher, data, directory='$WORK/library', samples=min(1024, n // 2),
                              held_out=min(512, n // 4), progress=False)
took = time.perf_counter() - t0
options = sum(len(s.options) - 1 for s in lib.sites)
json.dump({'seconds': took, 'sites': len(lib.sites), 'options': options, 'teacher_ms': lib.teacher_latency_ms,
           'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'},
          open('$OUT/compress_library.json', 'w'), indent=1)
print(f'{options} options on {len(lib.sites)} sites in {took:.0f} s')
"
# ONNX Runtime on the GPU (issue 29): which execution providers this onnxruntime has, and where CUDA's is there,
# the teacher and the student (float32 and static int8 files, as export writes them) timed in it side by side
step ort-gpu $PY -c "
import json, statistics, time, numpy as np, torch, cheapconv
try:
    import onnxruntime as ort
except ImportError:
    json.dump({'onnxruntime': None}, open('$OUT/ort_gpu.json', 'w')); print('onnxruntime not installed here'); raise SystemExit
providers = ort.get_available_providers()
found = {'onnxruntime': ort.__version__, 'providers': providers, 'timings_ms': {}}
if 'CUDAExecutionProvider' in providers:
    data = cheapconv.get_dataset('$DATA', 'train', augment=False)
    for name in ('teacher', 'student'):
        model = cheapconv.load('$WORK/teacher.pt' if name == 'teacher' else '$WORK/distilled.pt')
        cheapconv.export(model, '$WORK/' + name + '.onnx', 'onnx')
        cheapconv.export(model, '$WORK/' + name + '.int8.onnx', 'onnx', quantize='int8', calib_data=data,
                         accept_quantization_loss=True)
    for suffix in ('.onnx', '.int8.onnx'):
        sessions = {n: ort.InferenceSession('$WORK/' + n + suffix, providers=['CUDAExecutionProvider'])
                    for n in ('teacher', 'student')}
        for batch in (1, 32):
            x = np.random.randn(batch, 3, 32, 32).astype(np.float32)
            times = {n: [] for n in sessions}
            for r in range(60):
                for n, s in sessions.items():
                    t0 = time.perf_counter(); s.run(None, {s.get_inputs()[0].name: x}); dt = time.perf_counter() - t0
                    if r >= 10: times[n].append(1000 * dt)
            found['timings_ms'][suffix + ' b' + str(batch)] = {n: statistics.median(v) for n, v in times.items()}
json.dump(found, open('$OUT/ort_gpu.json', 'w'), indent=1)
print(json.dumps(found, indent=1))
"
rm -rf "$WORK"
echo "exit $status" >> "$OUT/summary.txt"
exit $status
