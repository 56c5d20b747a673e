#!/usr/bin/env bash
# The prepared GPU check (benchmarks/device_check.py), as one command on a fresh copy of the repository:
#
#     bash benchmarks/device_check.sh [device_check.py's options]
#
# It uses the Python that can already import seqwarm (an active venv, .venv/); failing that, it makes
# .venv-device-check/ with `pip install -e .`, reusing the machine's own torch (--system-site-packages)
# when there is one, so a CUDA build is never replaced. The check itself runs under a total timeout
# (DEVICE_CHECK_TIMEOUT seconds, 300 by default). Plain text on stdout, ready for docs/PERFORMANCE.md.
# DEVICE_CHECK_SCRIPT runs another prepared script the same way (benchmarks/study2_gpu.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python=""
for candidate in python .venv/bin/python .venv-device-check/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import seqwarm, torch" >/dev/null 2>&1; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    base=$(command -v python3 || command -v python)
    if "$base" -c "import torch" >/dev/null 2>&1; then
        echo "device_check: making .venv-device-check on the system's torch $("$base" -c 'import torch; print(torch.__version__)')" >&2
        "$base" -m venv --system-site-packages .venv-device-check
    else
        echo "device_check: no torch on this machine; making .venv-device-check (pip installs torch)" >&2
        "$base" -m venv .venv-device-check
    fi
    .venv-device-check/bin/python -m pip install --quiet -e . >&2
    python=.venv-device-check/bin/python
fi

exec timeout --kill-after=10 "${DEVICE_CHECK_TIMEOUT:-300}" "$python" "${DEVICE_CHECK_SCRIPT:-benchmarks/device_check.py}" "$@"
