#!/usr/bin/env bash
# Issue 10's GPU figures in one run (a few minutes on an H200): build the CUDA core for sm_90, run the CUDA
# tests, then time the kernels against torch in the same reference precision on the same device:
#   top-k Q=1k N=100k fp32 · Q=10k N=1M fp32 · Q=10k N=1M fp16 refs · DSS mining Q=50k N=90,618 k=128,
#   positive_ranks at VIGOR size (52,605 × 90,618, 3 ignored each) · polar 256 × 512²×3 as % of bandwidth.
#
#   OUT=/dir bash benchmarks/gpu/run_all.sh [driver options: --quick, --only topk_1k,polar, --budget 420]
#
# Writes $OUT/kernels/gpu_kernels.json and .md (after every section), tests.log and build.log. Run from a copy
# of the repository on the GPU machine (Python 3.12, torch+cu130, nvcc 13; nothing to download: pybind11,
# scikit-build-core, cmake, ninja and nvidia-cublas are in its image). Wheels it lacks travel in
# benchmarks/gpu/wheels/ (see train_figures.sh); none are needed here.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu_results}
R=$OUT/kernels
mkdir -p "$R"
t0=$(date +%s)
export PYTHONUNBUFFERED=1

SITE=${S4G_WHEEL_SITE:-/tmp/s4g-gpu-site}
if compgen -G "benchmarks/gpu/wheels/*.whl" > /dev/null; then
  pip install --quiet --no-index --no-deps --target "$SITE" benchmarks/gpu/wheels/*.whl > "$R/wheels.log" 2>&1 \
    || echo "wheel install failed (see $R/wheels.log)"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. s4g with the CUDA core for sm_90 (rebuilt unless an installed build already has this issue's API; the
#    check runs outside the checkout so that the installed package, not the source tree, answers).
if ! (cd /tmp && python -c "import s4g_engine._core_cuda as c; c.cublas_load; c.search_stats" 2> /dev/null); then
  echo "building s4g with CUDA (sm_90) ..."
  pip install --no-build-isolation --no-deps --no-index -Ccmake.define.S4G_CUDA=ON \
    -Ccmake.define.S4G_CUDA_ARCHITECTURES="${S4G_CUDA_ARCHS:-90}" . > "$R/build.log" 2>&1 \
    || { echo "build failed:"; tail -40 "$R/build.log"; exit 1; }
fi
echo "build/setup took $(( $(date +%s) - t0 )) s"
(cd /tmp && python -c "import s4g_engine; print('cuda:', s4g_engine.build_info()['cuda'])")

# 2. the CUDA tests (device == canonical == CPU, bit for bit; adversarial inputs; polar), then the figures.
(cd /tmp && timeout 300 python -m pytest -q -x -p no:cacheprovider -rs "$REPO/tests/test_core_cuda.py" 2>&1) \
  | tee "$R/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc ($(( $(date +%s) - t0 )) s)"

(cd /tmp && python "$REPO/benchmarks/gpu/kernels_gpu.py" --out "$R" "$@")
rc=$?
echo "GPU kernel figures: $R/gpu_kernels.md ($(( $(date +%s) - t0 )) s in all)"
cat "$R/gpu_kernels.md" 2> /dev/null | head -60
[ "$tests_rc" -eq 0 ] || exit "$tests_rc"
exit $rc
