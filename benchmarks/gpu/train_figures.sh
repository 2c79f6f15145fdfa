#!/usr/bin/env bash
# Issue 11's GPU figures in one run (~6–8 min on an H200 with 16 CPU cores): s4g-train at paper size against the
# model's own step and the reference loop, DSS refresh share at CVUSA size, the main job on the GPU, the loader's
# CPU cost, nvJPEG vs the contract's decoder, torch.compile; the device-path tests and the NCCL DDP test.
#
#   OUT=/dir bash benchmarks/gpu/train_figures.sh [driver options, e.g. --budget 480 --stages env,paper_step]
#
# Writes $OUT/train/train_figures.json and .md (after every stage) plus build/install logs. Run from a copy of
# the repository on the GPU machine. Python packages that machine lacks travel as wheels in benchmarks/gpu/wheels/
# (git-ignored: pass it in the device run's `carry`); fetch them here once with
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --no-deps -d benchmarks/gpu/wheels \
#     albumentations==2.0.8 albucore==0.0.24 stringzilla simsimd pydantic==2.14.4 pydantic-core==2.50.5 \
#     annotated-types typing-inspection typing_extensions faiss-cpu==1.15.1 pyproj==3.8.0 simplejpeg
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu_results}
R=$OUT/train
mkdir -p "$R"
t0=$(date +%s)
export PYTHONUNBUFFERED=1

# 1. the wheels this machine lacks, into a private folder on PYTHONPATH (no change to the system's packages)
SITE=${S4G_WHEEL_SITE:-/tmp/s4g-gpu-site}
if compgen -G "benchmarks/gpu/wheels/*.whl" > /dev/null; then
  pip install --quiet --no-index --no-deps --target "$SITE" benchmarks/gpu/wheels/*.whl > "$R/wheels.log" 2>&1 \
    || echo "wheel install failed (see $R/wheels.log)"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi

# 2. s4g with the CUDA core (skipped when an installed build already has it; imports are checked from outside
#    the checkout so that the installed package, not the source tree, is what answers)
if ! (cd /tmp && python -c "import s4g_engine._core_cuda, s4g_synth, s4g_train" 2> /dev/null); then
  echo "building s4g with CUDA ..."
  pip install --no-build-isolation --no-deps --no-index -Ccmake.define.S4G_CUDA=ON \
    -Ccmake.define.S4G_CUDA_ARCHITECTURES="${S4G_CUDA_ARCHS:-90}" . > "$R/build.log" 2>&1 \
    || { echo "build failed:"; tail -30 "$R/build.log"; }
fi
echo "setup took $(( $(date +%s) - t0 )) s"

# 3. the stages (each in its own process and time limit; figures are written after every stage)
cd /tmp && python "$REPO/benchmarks/gpu/train_figures.py" --out "$R" "$@"
rc=$?
echo "train figures: $R/train_figures.md ($(( $(date +%s) - t0 )) s in all)"
cat "$R/train_figures.md" 2> /dev/null | head -120
exit $rc
