#!/usr/bin/env bash
# The first GPU slot in one command: install the carried wheels, then run benchmarks/gpu_check.py (stage one
# views/s and MFU at 1/4/50 steps x batch sizes in bf16, a random SD 2.1-base-size folder, extract + fit +
# predict videos/s, the fit epoch on the GPU), which writes $OUT/gpu_check.json and $OUT/gpu_check.md.
# Ends within 8 minutes: the driver's budget is 440 s and `timeout` stops it at 465 s.
#
# The GPU machine has torch (Python 3.12) and most of the scientific stack but not these (no network there),
# so they travel as wheels in .whl/ (ignored by git; about 56 MB, under the 64 MiB a call carries):
#   diffusers==0.42.1 av==18.1.0 decord==0.6.0 mambapy==1.2.0 importlib-metadata==8.7.0
# Fetch them here once, in the repository root (decord needs the manylinux2010 tag):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl \
#     diffusers==0.42.1 av==18.1.0 decord==0.6.0 mambapy==1.2.0 importlib-metadata==8.7.0
#   python benchmarks/gpu_check.py --check-wheels .whl   # every Requires-Dist met (by the image or a wheel),
#                                                        # one version each, each module imports from them
# Then, with the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560).
# mamba-ssm is not carried (no binary wheel; building it takes longer than a slot): TCAB runs its pure-PyTorch
# scan there, and the JSON says which scan ran.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine ($OUT set by the device tool)
#   bash benchmarks/gpu_check.sh --dry-run   # tiny sizes on the CPU (the test suite runs this); PYTHON=... picks
#                                            # the interpreter; wheels are only checked, not installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
for a in "$@"; do [ "$a" = "--dry-run" ] && DRY=1; done
if ls .whl/*.whl >/dev/null 2>&1; then
    if [ "$DRY" = 1 ]; then
        "$PY" benchmarks/gpu_check.py --check-wheels .whl
    else
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
elif [ "$DRY" = 0 ]; then
    echo "gpu_check.sh: no wheels in .whl/; fetch them as this script's header says and carry .whl" >&2
    exit 2
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
set -o pipefail
timeout -k 10 465 "$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
