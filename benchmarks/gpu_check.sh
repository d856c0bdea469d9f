#!/usr/bin/env bash
# GPU check, at most about 8 minutes on one H100/H200 (not in CI: run it whenever a GPU machine is at hand, from the
# repository root; `make install` first if .venv is missing). In a scratch copy of the project, on the embedded digits:
#   1. the train stage in bf16, channels-last, one GPU worker (tune off), then evaluate with evaluate.use_gpu;
#   2. a 2-variant x 1-seed study whose cells are GPU Ray Train runs (and whose grids are measured on the GPU);
#   3. the self-distillation / plain step-time ratio for ResNet-50 at 224 px, batch 128, bf16 (ideal 1.626).
# Each part prints its figures; the script exits non-zero at the first part that fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || make -C "$ROOT" install
export PATH="$ROOT/.venv/bin:$PATH" DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
WORK=$(mktemp -d /tmp/adaskip-gpu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK")
cd "$WORK"

echo "== 1. train (bf16, channels-last, 1 GPU worker) and evaluate (evaluate.use_gpu)"
"$PY" - <<'EOF'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["tune"]["enabled"] = False
p["train"].update(epochs=5, workers=1, use_gpu=True, precision="bf16", channels_last=True)
p["evaluate"]["use_gpu"] = True
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
EOF
start=$SECONDS
for stage in prepare tune train evaluate; do "$PY" "pipelines/$stage.py"; done
echo "train + evaluate on the GPU: $((SECONDS - start)) s"
"$PY" -c "import pandas as pd; g = pd.read_csv('results/eval_grid.csv'); print(g[['skip', 'acc1', 'latency_ms', 'device']].head(4).to_string(index=False)); assert g.device.str.contains('cpu').sum() == 0, 'grid not measured on the GPU'"

echo "== 2. a 2-variant x 1-seed study with GPU cells"
cat > studies/ablation/gpu.yaml <<'EOF'
name: gpu-check
seeds: [0]
epochs: 3
overrides: {train: {workers: 1, use_gpu: true, precision: bf16}}
variants:
  adn: {}
  individual_full: {baseline: super}
EOF
start=$SECONDS
"$PY" pipelines/cells.py --study studies/ablation/gpu.yaml --plan
"$PY" pipelines/cells.py --study studies/ablation/gpu.yaml
echo "GPU study: $((SECONDS - start)) s"
"$PY" -c "import pandas as pd; r = pd.read_csv('studies/ablation/results/cells/adn.csv'); print(len(r), 'adn rows, top-1', r.acc1.min(), '-', r.acc1.max())"

echo "== 3. self-distillation / plain step time, ResNet-50, 224 px, batch 128, bf16 (ideal 1.626)"
"$PY" "$ROOT/benchmarks/train_step.py" --device cuda --amp bf16 --model resnet50 --image-size 224 --batch-size 128 \
    --channels-last both --reps 7
