#!/usr/bin/env bash
# GPU measurements for the "Scaling out" table (docs/scaling-out.md), as one short script for a lent GPU
# (written without one; first run it there): fp32 against bf16 for the AlexNets, and the per-epoch time of AlexNet7 on Fashion-MNIST 60k (x 200 for the
# `train alexnet7 --epochs 200` equivalent). Each row is a real `kmnist-fa train` run of
# a few epochs; wall time per epoch is read back from its run.json.
#
#   bash benchmarks/gpu_scaling.sh DATA_DIR FASHION_DIR OUT_DIR      (about 5 minutes on an H100-class GPU)
set -euo pipefail
DATA=${1:?KMNIST-10k folder}; FASHION=${2:?Fashion-MNIST folder}; OUT=${3:?output folder}
mkdir -p "$OUT"
EPOCHS=3
run() {  # NAME, then train options; prints NAME and seconds per epoch
  local name=$1; shift
  "$@" --epochs $EPOCHS --lr 1e-3 --models-dir "$OUT/models" --name "$name" -q > /dev/null
  python - "$OUT/models/$name" "$name" <<'EOF'
import sys
from kmnist_fa.runs import RunRecord
r = RunRecord.read(sys.argv[1])
per = [h["seconds"] for h in r.history][1:] or [h["seconds"] for h in r.history]  # epoch 1+ (after warm-up)
print(f"| {sys.argv[2]} | {r.device} | {r.config.optim.precision} | {sum(per) / len(per):.2f} |")
EOF
}
echo "| run | device | precision | s/epoch |" | tee "$OUT/table.md"
echo "|---|---|---|---:|" | tee -a "$OUT/table.md"
for arch in alexnet5 alexnet7; do
  run "$arch-fp32" python -m kmnist_fa train $arch --data "$DATA" | tee -a "$OUT/table.md"
  run "$arch-bf16" python -m kmnist_fa train $arch --data "$DATA" --precision bf16 | tee -a "$OUT/table.md"
done
run "alexnet7-fashion-fp32" python -m kmnist_fa train alexnet7 --data "$FASHION" | tee -a "$OUT/table.md"
run "alexnet7-fashion-bf16" python -m kmnist_fa train alexnet7 --data "$FASHION" --precision bf16 | tee -a "$OUT/table.md"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
