#!/usr/bin/env bash
# Study 2, reduced, on one GPU (benchmarks/study2_gpu.py), in at most 8 minutes, on a fresh copy of the repository:
#
#     bash benchmarks/study2_gpu.sh --out runs/study2-gpu [--data data/builtin-bpe1024] [study2_gpu.py's options]
#
# device_check.sh's environment (the Python that imports seqwarm and torch, else .venv-device-check/ on the
# machine's torch) under a total timeout of STUDY2_GPU_TIMEOUT seconds, 480 by default: the script budgets itself
# to 400 s (--budget-s), the timeout is the backstop. A machine without network needs the prepared corpus copied in
# (cp -r ~/.cache/seqwarm/data/builtin-bpe1024 data/) and --data data/builtin-bpe1024.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE_CHECK_SCRIPT=benchmarks/study2_gpu.py DEVICE_CHECK_TIMEOUT="${STUDY2_GPU_TIMEOUT:-480}" \
    exec bash benchmarks/device_check.sh "$@"
