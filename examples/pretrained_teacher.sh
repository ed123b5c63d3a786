#!/usr/bin/env bash
# The README's worked example: your pretrained network and your own images, end to end from the command line.
#
#   bash examples/pretrained_teacher.sh OUT_DIR            # the real run: set the four variables below
#   bash examples/pretrained_teacher.sh --smoke OUT_DIR    # a two-minute check (CI): random weights (under other
#                                                          # names) standing in for pretrained ones, a few generated
#                                                          # images, a few steps
#
# Variables (real run): MODEL (timm:NAME or a torchvision name), WEIGHTS (a local state dict of MODEL, e.g. ImageNet
# weights), BY_POSITION=1 when those weights name their tensors differently (same order and shapes), IMAGES (an
# ImageFolder: IMAGES/train/<class>/*.png and IMAGES/val/<class>/*.png), SIZE (the training resolution), BLOCK (the
# cheap block), EPOCHS_TEACHER and EPOCHS_STUDENT. Every step is one cheapconv command; a step whose output exists
# is skipped, so a stopped run continues where it was.
set -euo pipefail

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:?usage: pretrained_teacher.sh [--smoke] OUT_DIR}
mkdir -p "$OUT"

if [ "$SMOKE" = 1 ]; then
  MODEL=${MODEL:-timm:tf_efficientnet_lite0}
  SIZE=${SIZE:-32}; BLOCK=${BLOCK:-'LRp(0.5)'}
  IMAGES="$OUT/images"; WEIGHTS="$OUT/weights.pth"
  # stand-ins for what a user brings: a tiny ImageFolder and a weights file of the model (random, 1000 classes)
  python - "$IMAGES" "$WEIGHTS" "$MODEL" <<'PYCODE'
import sys
from pathlib import Path

import torch
from PIL import Image

import cheapconv

images, weights, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for split in ("train", "val"):
    for k, name in enumerate(("shirt", "shoe", "bag")):
        (images / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.new("RGB", (40, 36), color=(110 * k, 25 * i, 200 - 60 * k)).save(images / split / name / f"{i}.png")
# named as another codebase would name them (same tensors, same order): loaded with --weights-by-position
state = cheapconv.create_model(model).state_dict()
torch.save({f"net._{key.replace('.', '_')}": value for key, value in state.items()}, weights)
PYCODE
  BY_POSITION=1
  FIT=(--max-steps 2 --batch-size 8 --lr 0.01); DISTIL=(--max-steps 2 --batch-size 8); CALIB=(--calib-samples 16 --calib-steps 2)
  COMPARE=(--repeats 2 --warmup 1)
else
  MODEL=${MODEL:?set MODEL, e.g. timm:tf_efficientnet_lite0}
  WEIGHTS=${WEIGHTS:?set WEIGHTS to a local weights file of MODEL}
  IMAGES=${IMAGES:?set IMAGES to an ImageFolder with train/ and val/}
  SIZE=${SIZE:-96}; BLOCK=${BLOCK:-'LRp(0.5)'}
  FIT=(--epochs "${EPOCHS_TEACHER:-3}" --batch-size 64 --lr "${LR_TEACHER:-0.01}" --schedule cosine)
  DISTIL=(--epochs "${EPOCHS_STUDENT:-1}" --batch-size 64 ${LR_STUDENT:+--lr "$LR_STUDENT"})
  CALIB=(); COMPARE=()
fi
POSITION=(); if [ "${BY_POSITION:-0}" = 1 ]; then POSITION=(--weights-by-position); fi
DATA="imagefolder:$IMAGES"
step() { echo; echo "\$ cheapconv $*"; cheapconv "$@"; }

# 1. Fine-tune the pretrained network on your classes: every tensor but the classifier head is loaded (the head
#    is replaced for the folder's classes), and the file records the resolution and normalisation it was fed.
[ -f "$OUT/teacher.pt" ] || step train "$MODEL" --weights "$WEIGHTS" "${POSITION[@]}" --data "$DATA" \
  --image-size "$SIZE" "${FIT[@]}" -o "$OUT/teacher.pt"
step evaluate "$OUT/teacher.pt" --data "$DATA"

# 2. Cheapen it, then start the student from its teacher: closed forms, then a fit of every replaced block to the
#    teacher's outputs on your training images, at the recorded resolution.
[ -f "$OUT/student.pt" ] || step cheapen "$OUT/teacher.pt" --block "$BLOCK" -o "$OUT/student.pt"
[ -f "$OUT/student-init.pt" ] || step cheapen "$OUT/student.pt" --teacher "$OUT/teacher.pt" --init teacher \
  --calib-data "$DATA" "${CALIB[@]}" -o "$OUT/student-init.pt"
step evaluate "$OUT/student-init.pt" --data "$DATA"

# 3. Distil it (attention transfer, the fine-tuning recipe); the start and the end are evaluated and compared.
[ -f "$OUT/student-trained.pt" ] || step distill --teacher "$OUT/teacher.pt" --student "$OUT/student-init.pt" \
  --data "$DATA" "${DISTIL[@]}" -o "$OUT/student-trained.pt"

# 4. Export it (BatchNorm folded, checked against eager) with its preprocessing beside it, and score the deployed
#    file itself.
[ -f "$OUT/student.onnx" ] || step export "$OUT/student-trained.pt" --format onnx -o "$OUT/student.onnx"
step evaluate "$OUT/student.onnx" --data "$DATA"

# 5. Teacher against student where it will run: ONNX Runtime, one thread, the recorded input size.
step compare "$OUT/teacher.pt" "$OUT/student-trained.pt" --runtime onnxruntime --threads 1 --batch 16 "${COMPARE[@]}"
