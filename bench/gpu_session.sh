#!/usr/bin/env bash
# One prepared GPU session: install ascan for this GPU's architecture, then run every GPU check
# in order, each time-boxed, results in one folder (bench/gpu_session.py says what each step does).
#
#   bash bench/gpu_session.sh [--out DIR] [--quick] [--no-install] [--dry-run] [--rehearse-on-cpu]
#
#   --out DIR          results folder (default gpu-session-<UTC time>): gpu_session.json, summary.md,
#                      install.json/install.log, one <step>.json/.log per step
#   --quick            fewer models and batches (about 3 minutes after the install)
#   --no-install       use the ascan already installed in $PYTHON
#   --dry-run          print the install and session commands, run nothing
#   --rehearse-on-cpu  every step on the CPU at tiny shapes (no GPU needed; numbers mean nothing)
#
# $PYTHON (default python3) is the interpreter. Where it already has torch (a GPU image) the
# install builds against that torch and fetches nothing (--no-deps --no-build-isolation); else
# it is the README's pip install -e ".[test]". The CUDA extension is built for the GPU's compute
# capability alone (nvidia-smi), with MAX_JOBS = the core count.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT=""
INSTALL=1
DRY=0
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_session.sh: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --dry-run) DRY=1; shift ;;
    --quick|--rehearse-on-cpu) PASS+=("$1"); shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_session.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-gpu-session-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# The compute capabilities of the GPUs present ("9.0", or "8.0;9.0" for a mixed machine).
ARCH=""
if command -v nvidia-smi >/dev/null 2>&1; then
  ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' ' \
          | grep -E '^[0-9]+\.[0-9]+$' | sort -u | paste -sd';' -)"
fi
JOBS="$(nproc 2>/dev/null || echo 4)"

write_install() {  # status seconds reason command
  "$PY" - "$OUT/install.json" "$1" "$2" "$3" "$ARCH" "$JOBS" "$4" <<'PY'
import json, os, sys, tempfile
path, status, seconds, reason, arch, jobs, command = sys.argv[1:]
data = {"status": status, "seconds": float(seconds), "reason": reason or None, "arch": arch or None,
        "jobs": int(jobs), "command": command or None}
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
with os.fdopen(fd, "w") as f:
    json.dump(data, f, indent=1)
os.replace(tmp, path)
PY
}

if [ "$INSTALL" = 1 ]; then
  if [ -z "$ARCH" ]; then
    reason="no GPU found (nvidia-smi missing or it listed none): nothing to build CUDA kernels for; the session uses the ascan installed in $PY"
    echo "gpu_session.sh: install skipped: $reason" >&2
    [ "$DRY" = 1 ] || write_install skipped 0 "$reason" ""
  else
    if "$PY" -c "import torch" >/dev/null 2>&1; then
      CMD=("$PY" -m pip install --no-deps --no-build-isolation -e .)
    else
      CMD=("$PY" -m pip install -e ".[test]")
    fi
    echo "gpu_session.sh: install: TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$JOBS ASCAN_REQUIRE_EXT=1 ${CMD[*]}" >&2
    if [ "$DRY" = 0 ]; then
      start=$(date +%s)
      TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$JOBS" ASCAN_REQUIRE_EXT=1 "${CMD[@]}" >"$OUT/install.log" 2>&1
      rc=$?
      took=$(( $(date +%s) - start ))
      if [ $rc -eq 0 ]; then
        write_install ok "$took" "" "${CMD[*]}"
        echo "gpu_session.sh: installed in ${took} s" >&2
      else
        write_install failed "$took" "pip exited $rc: $(grep -m1 -iE 'error' "$OUT/install.log" | cut -c1-300)" "${CMD[*]}"
        echo "gpu_session.sh: the install failed (exit $rc) after ${took} s; see $OUT/install.log" >&2
      fi
    fi
  fi
fi

SESSION=("$PY" -m bench.gpu_session --out "$OUT" ${PASS[@]+"${PASS[@]}"})
[ -f "$OUT/install.json" ] && [ "$INSTALL" = 1 ] && SESSION+=(--install-json "$OUT/install.json")
if [ "$DRY" = 1 ]; then
  echo "gpu_session.sh: session: ${SESSION[*]}" >&2
  exit 0
fi
if ! "$PY" -c "import ascan, ascan_kernels" >/dev/null 2>&1; then
  echo "gpu_session.sh: ascan does not import in $PY; the install log is $OUT/install.log" >&2
  exit 1
fi
exec "${SESSION[@]}"
