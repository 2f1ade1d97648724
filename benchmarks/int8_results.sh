#!/usr/bin/env bash
# Writes every measured benchmarks/results/int8_* file (int8_summary.md is written by hand from
# them): the checkpoints (paper config with random weights; tiny trained 1000 steps on synthetic
# data), the exports with the INT8 CCM (the default) and with --no-int8-ccm, one dpnet-bench run
# per config and K (torch, ort, ort-fp16, ort-int8 interleaved), the float-CCM INT8 rows, the
# parts of the INT8 time (the floor), the INT8 similarity kernels side by side, and localize.
# Run it on a quiet machine: every figure depends on the load (each file records it).
#
#   benchmarks/int8_results.sh [WORK_DIR]
#
# WORK_DIR (default: a new /tmp/dpnet-int8.XXXXXX) keeps checkpoints and exports; a paper.pt or
# tiny_run/last.pt already there is reused. Environment: THREADS (default 2), TINY_EPISODES
# (300), PAPER_EPISODES_1 (20), PAPER_EPISODES_5 (10), TINY_STEPS (1000).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,15p' "$0"
    exit 0
fi
work=${1:-$(mktemp -d /tmp/dpnet-int8.XXXXXX)}
mkdir -p "$work"
results=$(cd "$(dirname "$0")" && pwd)/results
threads=${THREADS:-2}
tiny_episodes=${TINY_EPISODES:-300}
echo "work folder: $work"
cd "$work"

{
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "flags: $(grep -o 'avx512[a-z0-9_]*\|avx_vnni\|amx[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "start: $(date -u +%FT%TZ) $(uptime)"
} >"$results/int8_cpu.txt"

if [ ! -f paper.pt ]; then
    python - <<'EOF'
import torch
from pathlib import Path
from dpnet.checkpoint import make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.model.dpnet import build_dpnet
torch.manual_seed(0)
model = build_dpnet(preset("paper"), pretrained_backbone=False)
save_checkpoint(Path("paper.pt"), model, make_meta(dataset="synthetic", fold=0, shots=1, epoch=0))
EOF
fi
if [ ! -f tiny_run/last.pt ]; then
    dpnet-train --dataset synthetic --fold 0 --config tiny --steps "${TINY_STEPS:-1000}" \
        --val-every 0 --val-episodes 0 --out tiny_run
fi

# Exports: the INT8 CCM (default) and the float one; the paper export is the timed one.
COLUMNS=120 dpnet-export onnx --ckpt paper.pt --out paper_out --precision fp16,int8 \
    | tee "$results/int8_export_paper.txt"
dpnet-export onnx --ckpt paper.pt --out paper_float_ccm --precision int8 --no-int8-ccm >/dev/null
dpnet-export onnx --ckpt tiny_run/last.pt --out tiny_out --precision fp16,int8 >/dev/null
dpnet-export onnx --ckpt tiny_run/last.pt --out tiny_float_ccm --precision int8 --no-int8-ccm >/dev/null

bench() {  # checkpoint artifacts K episodes backends name; exit 3 (a parity gate) is a result
    dpnet-bench --ckpt "$1" --model "$2" --shots "$3" --episodes "$4" --backends "$5" \
        --warmup-s 2 --threads "$threads" \
        --json "$results/$6.json" --markdown "$results/$6.md" || [ $? -eq 3 ]
}
for shots in 1 5; do
    episodes_var=PAPER_EPISODES_$shots
    paper_episodes=${!episodes_var:-$([ "$shots" = 1 ] && echo 20 || echo 10)}
    bench paper.pt paper_out "$shots" "$paper_episodes" torch,ort,ort-fp16,ort-int8 \
        "int8_paper_${shots}shot"
    bench tiny_run/last.pt tiny_out "$shots" "$tiny_episodes" torch,ort,ort-fp16,ort-int8 \
        "int8_tiny_${shots}shot"
    bench paper.pt paper_float_ccm "$shots" "$paper_episodes" torch,ort,ort-int8 \
        "int8_paper_${shots}shot_float_ccm"
    bench tiny_run/last.pt tiny_float_ccm "$shots" "$tiny_episodes" torch,ort,ort-int8 \
        "int8_tiny_${shots}shot_float_ccm"
    for config in paper tiny; do
        python -m dpnet_bench.int8_parts --model "${config}_out" --shots "$shots" \
            --episodes 10 --threads "$threads" \
            --json "$results/int8_parts_${config}_${shots}shot.json" \
            --markdown "$results/int8_parts_${config}_${shots}shot.md"
    done
done

for config in paper tiny; do
    python -m dpnet_bench.similarity_int8 --model "${config}_out" --shots 1,5 \
        --threads "$threads" --repeats 10 \
        --json "$results/int8_similarity_${config}.json" \
        --markdown "$results/int8_similarity_${config}.md"
done

for folder in tiny_out tiny_float_ccm; do
    COLUMNS=160 python -m dpnet_bench.localize --model "$folder" --episodes 8 \
        | sed "s|$work/||g" >"$results/int8_localize_${folder/_out/}.txt"
done

echo "end: $(date -u +%FT%TZ) $(uptime)" >>"$results/int8_cpu.txt"
echo "wrote $results/int8_*"
