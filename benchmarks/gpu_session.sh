#!/usr/bin/env bash
# Every GPU row of benchmarks/README.md (issue 16) in one prepared command, sized for one
# device call (about 8 minutes on an H100/H200, each part under its own timeout).
#
# Here, once (the device machine has torch, timm and OpenCV but not kornia, POT or ART):
#     bash benchmarks/gpu_session.sh --fetch-wheels       # wheels into .whl/ (git-ignored)
# On the device (the `device` tool): run(command="bash benchmarks/gpu_session.sh",
#     carry=[".whl"], timeout_s=600); the logs and JSON come back from $OUT.
# Without a GPU, `SMOKE=1 bash benchmarks/gpu_session.sh` runs the same steps at toy sizes on the
# CPU (to check the script, not to measure anything).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    for w in kornia==0.9.0 kornia_rs pot==0.9.7 adversarial-robustness-toolbox==1.20.1; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${plat[@]}" -d .whl "$w" || exit 1
    done
    ls -la .whl
    exit 0
fi

OUT=${OUT:-/tmp/patchlab_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${SMOKE:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then  # cp312 wheels: the device's Python
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
PY=${PY:-python3}  # SMOKE=1 PY=.venv/bin/python here
if [ "${SMOKE:-0}" = 1 ]; then
    DEV=cpu
    OPT=(--models mobilenetv2_100 --size 32 --batch 8 --losses sw,ce --repeats 1 --warmup 1 --art-iters 1)
    SW=(--n 64 --d 64 --w2-n 32 --repeats 1 --warmup 1)
    DATA=(--model mobilenetv2_100 --model-size 32 --size 64 --n 32 --batch 8 --workers 0,1 --repeats 1 --warmup 1
        --decode-batches 1)
else
    DEV=cuda
    OPT=(--models resnet50,vit_base_patch16_224 --size 224 --batch 64,128 --losses sw,ce --repeats 7 --warmup 2
        --art-iters 2)
    SW=(--repeats 7 --warmup 2)
    DATA=(--model resnet50 --model-size 224 --size 256 --n 2048 --batch 128 --workers 4,8,14 --precision bf16
        --repeats 6 --warmup 2)
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
    $PY -c "import kornia, ot; print('kornia', kornia.__version__, 'pot', ot.__version__)"
    $PY -c "import art; print('art', art.__version__)" || echo "ART missing: its column stays empty"
} 2>&1 | tee "$OUT/env.txt"

run() {  # name, seconds, command...
    local name=$1 secs=$2
    shift 2
    echo "=== $name ($(date -u +%T))"
    timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name exit ${PIPESTATUS[0]}"
}

run bench_optimize 300 $PY benchmarks/bench_optimize.py "${OPT[@]}" --eot physical --device $DEV \
    --json "$OUT/bench_optimize.json"
run bench_sw 90 $PY benchmarks/bench_sw.py "${SW[@]}" --device $DEV
run bench_data 120 $PY benchmarks/bench_data.py "${DATA[@]}" --device $DEV
echo "=== all done ($(date -u +%T))"
