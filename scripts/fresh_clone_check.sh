#!/usr/bin/env bash
# The README's two set-up commands on a fresh clone, in a fresh virtual environment, without network.
#
#   bash scripts/fresh_clone_check.sh [pytest arguments for command 2]
#
# 1. `git clone` of this repository's committed HEAD into a temporary folder (uncommitted files do not come
#    along), a new `python -m venv` (no --system-site-packages), HOME, GENMETRICS_HOME and TORCH_HOME in
#    that folder (no cache of a previous run);
# 2. the README's command 1: `pip install -e '.[test]'` from the package registries that pip is configured
#    with (the only network it uses), then `genmetrics demo` with no network at all: in a network namespace
#    that has only loopback (`unshare -n`, as root);
# 3. the README's command 2, `bash scripts/test.sh`, also without network, on the tests given as arguments
#    (default: the command line, the demo and the MLflow UI test; the full suite is CI's own step);
# 4. the numerical tests (NUMERICAL_TESTS below) once more, also without network, under another BLAS and
#    kernel set-up than the suite's: one thread, OpenBLAS's Prescott kernels, MKL's compatible code path and
#    torch's scalar CPU kernels (BLAS_SETUP below). Every matrix product and reduction then sums in another
#    order, as on another CPU or thread count: a tolerance taken from one machine's output instead of an error
#    model fails here (docs/development.md, "Numerical tolerances").
# Without `unshare` (not root) steps 2-4 run with the network, and the script says so.
#
# Prints the wall time of each command. .ci/run calls it with this machine's local package mirror.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/genmetrics-fresh.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(tests/test_plugin_cli.py tests/test_plugin_demo.py tests/test_plugin_ui.py)
NUMERICAL_TESTS=(tests/test_stats_frechet.py tests/test_stats_moments.py tests/test_stats_kid.py tests/test_stats_is.py
                 tests/test_stats_prdc.py tests/test_stats_cmmd.py tests/test_stats_copy_detection.py
                 tests/test_stats_resize_pil.py tests/test_stats_preprocess.py tests/test_stats_ssim.py
                 tests/test_registry_format.py)
BLAS_SETUP=(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_CORETYPE=Prescott MKL_CBWR=COMPATIBLE
            ATEN_CPU_CAPABILITY=default)

git clone -q "$repo" "$work/repo"
mkdir -p "$work/home"
export HOME="$work/home" GENMETRICS_HOME="$work/home/genmetrics" TORCH_HOME="$work/home/torch"

offline() {
  if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
  else
    echo "fresh_clone_check: no network namespace here (needs root and unshare): running with the network" >&2
    "$@"
  fi
}

timed() {  # timed LABEL [offline] COMMAND: run it in the clone with the fresh venv, print the wall time
  local label=$1 start=$SECONDS
  shift
  (cd "$work/repo" && "$@")
  echo "fresh_clone_check: $label: $((SECONDS - start)) s" >&2
}

python3 -m venv "$work/venv"
venv=". '$work/venv/bin/activate'"
timed "pip install -e '.[test]' (package registries)" bash -c "$venv && pip install -q -e '.[test]'"
echo "fresh_clone_check: the venv after command 1: $(du -sh "$work/venv" | cut -f1) ($(du -sh "$work/venv"/lib/python3*/site-packages/nvidia 2>/dev/null | cut -f1 || echo 0) of it NVIDIA libraries)" >&2
timed "genmetrics demo (no network)" offline bash -c "$venv && genmetrics demo"
timed "bash scripts/test.sh ${tests[*]} (no network)" offline bash -c "$venv && bash scripts/test.sh ${tests[*]}"
timed "numerical tests under ${BLAS_SETUP[*]} (no network)" offline \
  bash -c "$venv && env ${BLAS_SETUP[*]} python -m pytest -q ${NUMERICAL_TESTS[*]}"
