#!/usr/bin/env bash
# GPU acceptance of the TensorRT path: the one script to run on a machine with an NVIDIA GPU
# (and, ideally, TensorRT), in under 8 minutes. It runs
#   1. the real-engine tests (pytest -m "trt or gpu"): build and cache reuse, parity with ONNX
#      Runtime, a corrupt and a foreign timing cache, FP32 vs TF32 ArgMax agreement on a 1024-d
#      similarity, strongly vs weakly typed FP16 on TensorRT 10 (C' agreement, mIoU, inf/NaN),
#      infer_device with a misaligned and a non-contiguous buffer, a runner on device 1 called
#      from a worker thread;
#   2. dpnet-bench with torch, torch-fp16, ort, trt (FP32 engine) and trt-fp16 (FP16 engine),
# and writes benchmarks/results/gpu_acceptance.md (tests) and gpu_bench.md (latency, parity).
# With PyTorch CUDA but no TensorRT it still measures torch and torch-fp16; with no GPU at all
# it says so and exits 0 at once. Every skipped part is listed on stdout and in the results.
#
# usage: benchmarks/gpu/acceptance.sh [--out DIR] [--ckpt CHECKPOINT] [--episodes N]
#                                     [--python PYTHON] [--dry-run]
#   --out       results folder [benchmarks/results]
#   --ckpt      checkpoint to bench [a random tiny one, made here]
#   --episodes  bench episodes per backend [50]
#   --python    interpreter with dpnet installed [.venv/bin/python, else python3]
#   --dry-run   detect and print the plan, run nothing
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/benchmarks/results"
ckpt=""
episodes=50
python=""
dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --ckpt) ckpt=${2:?--ckpt needs a file}; shift 2 ;;
        --episodes) episodes=${2:?--episodes needs a number}; shift 2 ;;
        --python) python=${2:?--python needs an interpreter}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "acceptance.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$episodes" in ''|*[!0-9]*) echo "acceptance.sh: --episodes must be a number" >&2; exit 2 ;; esac
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if ! "$python" -c "import dpnet_runtime" 2>/dev/null; then
    echo "acceptance.sh: $python cannot import dpnet_runtime; pip install -e '.[dev,trt]' first" >&2
    exit 2
fi

# --- what this machine has ---------------------------------------------------------------
# One interpreter start (importing torch is the slow part): "torch_cuda tensorrt devices".
read -r torch_cuda tensorrt cuda_devices < <("$python" - 2>/dev/null <<'PY'
try:
    import torch
    torch_cuda = "yes" if torch.cuda.is_available() else "no"
except ImportError:
    torch_cuda = "no"
try:
    import tensorrt
    version = tensorrt.__version__
except Exception:  # absent, or its libraries cannot load
    version = "no"
try:
    from cuda.bindings import runtime
    err, count = runtime.cudaGetDeviceCount()
    devices = count if err == runtime.cudaError_t.cudaSuccess else 0
except Exception:
    devices = 0
print(torch_cuda, version, devices)
PY
)
torch_cuda=${torch_cuda:-no}; tensorrt=${tensorrt:-no}; cuda_devices=${cuda_devices:-0}
skipped=()
[ "$tensorrt" = "no" ] && skipped+=("TensorRT tests and the trt bench row: TensorRT is not installed (pip install -e '.[trt]')")
[ "$tensorrt" != "no" ] && [ "$cuda_devices" = "0" ] && skipped+=("TensorRT tests: cuda-python sees no CUDA device")
[ "$torch_cuda" = "no" ] && skipped+=("torch and torch-fp16 on CUDA: PyTorch has no CUDA device")
echo "machine: torch CUDA=$torch_cuda, TensorRT=$tensorrt, CUDA devices (cuda-python)=$cuda_devices"

run_tests=0; [ "$tensorrt" != "no" ] && [ "$cuda_devices" != "0" ] && run_tests=1
backends=()
[ "$torch_cuda" = "yes" ] && backends+=(torch torch-fp16)
[ "$run_tests" = 1 ] && backends+=(ort trt trt-fp16)

for line in "${skipped[@]}"; do echo "skipped: $line"; done
if [ "$run_tests" = 0 ] && [ ${#backends[@]} -eq 0 ]; then
    echo "nothing to measure on this machine (no CUDA GPU reachable from PyTorch or TensorRT); no results written"
    exit 0
fi
bench_list=$(IFS=,; echo "${backends[*]}")
echo "plan: tests=$([ "$run_tests" = 1 ] && echo yes || echo no), bench backends=${bench_list:-none}, episodes=$episodes, out=$out"
[ "$dry_run" = 1 ] && exit 0

# --- run ----------------------------------------------------------------------------------
dpnet_export() { "$python" -c 'from dpnet_export.cli import main; main()' "$@"; }
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/dpnet-gpu-acceptance.XXXXXX")
trap 'rm -rf "$work"' EXIT
status=0
report="$out/gpu_acceptance.md"
{
    echo "# GPU acceptance ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "Command: \`benchmarks/gpu/acceptance.sh --episodes $episodes\`"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -5
    "$python" -c "import sys, numpy, onnxruntime; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
    echo "torch CUDA: $torch_cuda; TensorRT: $tensorrt; CUDA devices: $cuda_devices"
    echo '```'
    echo
    for line in "${skipped[@]}"; do echo "- skipped: $line"; done
} > "$report"

if [ "$run_tests" = 1 ]; then
    echo "running the trt/gpu tests (pytest -m 'trt or gpu')"
    (cd "$root" && timeout 330 "$python" -m pytest -m "trt or gpu" -rA -s -q \
        tests/runtime/test_trt_engine.py tests/runtime/test_trt_acceptance.py) > "$work/pytest.log" 2>&1
    code=$?
    [ $code -ne 0 ] && status=1
    {
        echo
        echo "## trt/gpu tests (exit $code)"
        echo
        echo '```'
        grep -E "^(RESULT|PASSED|FAILED|SKIPPED|ERROR)|passed|failed" "$work/pytest.log" | tail -60
        echo '```'
    } >> "$report"
    tail -5 "$work/pytest.log"
fi

if [ ${#backends[@]} -gt 0 ]; then
    if [ -z "$ckpt" ]; then
        ckpt="$work/tiny.pt"
        "$python" - "$ckpt" <<'PY'
import sys, torch
from dpnet.checkpoint import make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.model.dpnet import build_dpnet
torch.manual_seed(0)
model = build_dpnet(preset("tiny"), pretrained_backbone=False)
save_checkpoint(sys.argv[1], model, make_meta(dataset="synthetic", fold=0, shots=1, epoch=0))
PY
    fi
    artifacts="$work/export"
    if [ "$run_tests" = 1 ]; then
        dpnet_export onnx --ckpt "$ckpt" --out "$artifacts" --precision fp16 >/dev/null \
            && dpnet_export trt --model "$artifacts" --precision fp32 \
            && dpnet_export trt --model "$artifacts" --precision fp16 \
            || { echo "engine build failed: the trt rows will say why"; status=1; }
    fi
    echo "running dpnet-bench --backends $bench_list"
    (cd "$root" && timeout 240 "$python" -c 'from dpnet_bench.cli import main; main()' --ckpt "$ckpt" --model "$artifacts" \
        --episodes "$episodes" --backends "$bench_list" --markdown "$out/gpu_bench.md") \
        > "$work/bench.log" 2>&1
    code=$?
    [ $code -ne 0 ] && status=1
    { echo; echo "## dpnet-bench (exit $code): see gpu_bench.md"; } >> "$report"
    tail -20 "$work/bench.log"
fi
echo "wrote $report"
exit $status
