#!/usr/bin/env bash
# One-shot GPU benchmark for a lent device machine (issue 6): every figure in priority order,
# each step under its own time limit, so a slow step cannot eat the budget and whatever
# finished is already in $OUT when something is cut off.
#
#   here, once:  scripts/device-wheels.sh          # diffusers + websockets wheels into .whl/
#   device:      run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=600)
#   rehearsal:   DEVICE=cpu INSTALL=0 PYTHON=.venv/bin/python OUT=out/rehearsal \
#                    bash benchmarks/device_run.sh      # the same flow on the tiny model
#
# Steps (reports in $OUT; steps.txt says how each ended, device_run.log holds everything):
#   core      protocol.json       protocol_cost: daemon+client vs plain socket, 512/1024/2048 px
#             sd15-b1.json        SD1.5 512 px batch 1, compiled: stock, atelier, daemon, tiling
#             sdxl-b1-eager.json  SDXL 1024 px batch 1, not compiled, with the low-memory row
#   if time   sd15-b1-eager.json  (only if sd15-b1 failed) the same not compiled
#             sd15-b1-graphs.json SD1.5 batch 1 compiled with CUDA graphs (--compile-mode
#                                 reduce-overhead): stock, atelier, daemon
#             sd15-b4.json        SD1.5 batch 4, compiled
#             sdxl-b1.json        SDXL batch 1 compiled, when the SD1.5 compile time predicts
#                                 it fits
# The core steps get fixed shares of the budget (time a step leaves unused passes on); the
# others run only when what is left covers what the earlier steps measured they will need.
#
# Settings (environment): OUT (required), BUDGET_S (whole run in seconds, default 480),
# DEVICE (cuda; cpu = rehearsal on the tiny model), PYTHON (python3), WHEELS (.whl),
# INSTALL (1; 0 uses what is installed), SITE (/tmp/atelier-site: where wheels go),
# BENCH_HOME (/tmp/atelier-bench: random-weight models, built once, on the device),
# STEPS and REPEATS (sampler steps and repetitions; 30 and 3 on a GPU, 3 and 1 on the CPU).

set -u
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the folder for reports and the log}"
BUDGET_S=${BUDGET_S:-480}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
INSTALL=${INSTALL:-1}
SITE=${SITE:-/tmp/atelier-site}
BENCH_HOME=${BENCH_HOME:-/tmp/atelier-bench}
GRACE=10                         # a step's SIGTERM-to-SIGKILL allowance, kept out of its limit
SDXL_COMPILE_FACTOR=3            # SDXL's compile vs SD1.5's (about 3x the UNet graph; a guess)

if [ "$DEVICE" = cpu ]; then     # rehearsal: the same flow, tiny model, seconds per step
    STEPS=${STEPS:-3}; REPEATS=${REPEATS:-1}
    SD15=(--model tiny); SDXL=(--model tiny-sdxl)
    PROTOCOL=(--sizes 64 128 --repeats 1 --warmup 1)
    MIN_PROTOCOL=5; MIN_GEN=5
    GRAPHS=(--no-compile --compile-mode reduce-overhead)   # the flow only: no CUDA graphs on a CPU
else
    STEPS=${STEPS:-30}; REPEATS=${REPEATS:-3}
    SD15=(--family sd15); SDXL=(--family sdxl)
    PROTOCOL=()                  # 512, 1024 and 2048 px, 15 repetitions at 512
    GRAPHS=(--compile --compile-mode reduce-overhead)
    MIN_PROTOCOL=15; MIN_GEN=60   # protocol_cost takes ~10 s; less than a minute fits no model
fi
SDXL_REPEATS=$(( REPEATS > 2 ? 2 : REPEATS ))   # SDXL rows take seconds each
GEN=(-m benchmarks.generation --device "$DEVICE" --home "$BENCH_HOME" --steps "$STEPS")
SHARE_SD15=40; SHARE_SDXL=40     # percent of the budget held for the later core steps

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false
T0=$SECONDS
STEPS_FILE="$OUT/steps.txt"

remaining() { echo $(( BUDGET_S - (SECONDS - T0) )); }

record() {   # name status rc seconds limit report
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$STEPS_FILE"
}

# run_step NAME LIMIT_S REPORT CMD...: run CMD under LIMIT_S; sets STATUS and TOOK.
run_step() {
    local name=$1 limit=$2 report=$3 started=$SECONDS rc
    shift 3
    echo
    echo "=== $name (limit ${limit}s, $(remaining)s of the budget left): $*"
    timeout -k "$GRACE" "$limit" "$@"
    rc=$?
    TOOK=$((SECONDS - started))
    case $rc in
        0) STATUS=ok ;;
        124|137) STATUS=timeout ;;
        *) STATUS=failed ;;
    esac
    if [ "$report" != - ] && [ ! -s "$OUT/$report" ]; then
        [ "$STATUS" = ok ] && STATUS=no-report
        report=-
    fi
    record "$name" "$STATUS" "$rc" "$TOOK" "$limit" "$report"
    echo "=== $name: $STATUS (rc $rc) in ${TOOK}s"
}

skip_step() {   # name why
    record "$1" skipped - 0 - -
    echo
    echo "=== $1: skipped: $2"
}

# core_step NAME RESERVE_S MIN_S REPORT CMD...: gets what is left less what later core steps
# hold, if that is at least MIN_S.
core_step() {
    local name=$1 reserve=$2 least=$3 report=$4 limit
    shift 4
    limit=$(( $(remaining) - reserve - GRACE ))
    if [ "$limit" -lt "$least" ]; then
        skip_step "$name" "only ${limit}s left for it"
        STATUS=skipped; TOOK=0
        return
    fi
    run_step "$name" "$limit" "$report" "$@"
}

# optional_step NAME NEED_S REPORT CMD...: runs only if NEED_S fits in what is left.
optional_step() {
    local name=$1 need=$2 report=$3 limit
    shift 3
    limit=$(( $(remaining) - GRACE ))
    [ "$need" -lt "$MIN_GEN" ] && need=$MIN_GEN
    if [ "$limit" -lt "$need" ]; then
        skip_step "$name" "needs ~${need}s, ${limit}s left"
        return
    fi
    run_step "$name" "$limit" "$report" "$@"
}

setup() {
    echo "=== setup: DEVICE=$DEVICE BUDGET_S=$BUDGET_S PYTHON=$PYTHON WHEELS=$WHEELS INSTALL=$INSTALL"
    if [ "$INSTALL" = 1 ]; then
        shopt -s nullglob
        local wheels=("$WHEELS"/*.whl)
        shopt -u nullglob
        if [ ${#wheels[@]} -eq 0 ]; then
            echo "no wheels in $WHEELS: run scripts/device-wheels.sh on the machine with" \
                 "network and carry $WHEELS (or INSTALL=0 where the packages are installed)"
            return 2
        fi
        rm -rf "$SITE"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}" || return 2
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
        echo "installed into $SITE: ${wheels[*]##*/}"
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
    # One interpreter start for every import the steps need, and where each came from.
    timeout 180 "$PYTHON" - "$DEVICE" <<'EOF' || return 3
import importlib, importlib.metadata as md, platform, sys
device = sys.argv[1]
print("python", platform.python_version(), sys.executable)
for name in ("torch", "diffusers", "transformers", "accelerate", "safetensors",
             "huggingface_hub", "websockets", "numpy", "PIL"):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        print(f"  {name}: MISSING ({exc})")
        continue
    dist = {"PIL": "pillow", "huggingface_hub": "huggingface-hub"}.get(name, name)
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = getattr(module, "__version__", "?")
    print(f"  {name} {version} from {module.__file__}")
import torch
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import backend.server, benchmarks.generation, benchmarks.protocol_cost   # noqa: F401
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("DEVICE=cuda but torch sees no GPU")
print("imports ok")
EOF
}

main() {
    rm -f "$STEPS_FILE" "$OUT"/protocol.json "$OUT"/sd15-*.json "$OUT"/sdxl-*.json
    local started=$SECONDS
    setup
    local rc=$?
    record setup "$([ $rc = 0 ] && echo ok || echo failed)" "$rc" $((SECONDS - started)) - -
    if [ $rc != 0 ]; then
        echo "=== setup failed (rc $rc): nothing measured"
        return $rc
    fi

    local hold_sd15=$(( BUDGET_S * SHARE_SD15 / 100 )) hold_sdxl=$(( BUDGET_S * SHARE_SDXL / 100 ))
    local failed=0

    core_step protocol $(( hold_sd15 + hold_sdxl )) "$MIN_PROTOCOL" protocol.json \
        "$PYTHON" -m benchmarks.protocol_cost "${PROTOCOL[@]}" --json "$OUT/protocol.json"
    [ "$STATUS" = ok ] || failed=1

    core_step sd15-b1 "$hold_sdxl" "$MIN_GEN" sd15-b1.json \
        "$PYTHON" "${GEN[@]}" "${SD15[@]}" --batch 1 --repeats "$REPEATS" \
        --rows stock atelier daemon atelier+tiling --json "$OUT/sd15-b1.json"
    local sd15_status=$STATUS sd15_took=$TOOK
    [ "$STATUS" = ok ] || failed=1

    core_step sdxl-b1-eager 0 "$MIN_GEN" sdxl-b1-eager.json \
        "$PYTHON" "${GEN[@]}" "${SDXL[@]}" --batch 1 --repeats "$SDXL_REPEATS" --no-compile \
        --low-memory --rows stock atelier daemon atelier+tiling atelier+adapter atelier+cache3 \
        atelier-lowmem \
        --json "$OUT/sdxl-b1-eager.json"
    local sdxl_status=$STATUS sdxl_took=$TOOK
    [ "$STATUS" = ok ] || failed=1

    if [ "$sd15_status" != ok ]; then
        # Compiling did not fit (or failed): the same figures without it, if there is time.
        optional_step sd15-b1-eager "$MIN_GEN" sd15-b1-eager.json \
            "$PYTHON" "${GEN[@]}" "${SD15[@]}" --batch 1 --repeats "$REPEATS" --no-compile \
            --rows stock atelier daemon atelier+tiling --json "$OUT/sd15-b1-eager.json"
        skip_step sd15-b1-graphs "sd15-b1 did not finish compiled"
        skip_step sd15-b4 "sd15-b1 did not finish compiled"
        skip_step sdxl-b1 "sd15-b1 did not finish compiled"
    else
        # Another compile mode compiles from scratch: about the compiled batch-1 step's time.
        optional_step sd15-b1-graphs "$sd15_took" sd15-b1-graphs.json \
            "$PYTHON" "${GEN[@]}" "${SD15[@]}" --batch 1 --repeats "$REPEATS" "${GRAPHS[@]}" \
            --rows stock atelier daemon --json "$OUT/sd15-b1-graphs.json"
        # Batch 4 compiles again (new shapes) while the batch-1 graphs come from the cache:
        # about the batch-1 step's time.
        optional_step sd15-b4 "$sd15_took" sd15-b4.json \
            "$PYTHON" "${GEN[@]}" "${SD15[@]}" --batch 4 --repeats "$REPEATS" \
            --rows stock atelier daemon --json "$OUT/sd15-b4.json"
        local compile_s
        compile_s=$("$PYTHON" -m benchmarks.device_report compile-seconds "$OUT/sd15-b1.json")
        if [ "$sdxl_status" != ok ] || [ -z "$compile_s" ]; then
            skip_step sdxl-b1 "no measured base (sdxl-b1-eager: $sdxl_status) or compile time"
        else
            echo "sd15 compile at load ~${compile_s}s; sdxl-b1 needs ~$(( sdxl_took + SDXL_COMPILE_FACTOR * compile_s ))s"
            optional_step sdxl-b1 $(( sdxl_took + SDXL_COMPILE_FACTOR * compile_s )) sdxl-b1.json \
                "$PYTHON" "${GEN[@]}" "${SDXL[@]}" --batch 1 --repeats "$SDXL_REPEATS" \
                --rows stock atelier daemon atelier+tiling --json "$OUT/sdxl-b1.json"
        fi
    fi

    echo
    echo "=== summary ($((SECONDS - T0))s of ${BUDGET_S}s)"
    "$PYTHON" -m benchmarks.device_report summary "$OUT"
    return $failed
}

mkdir -p "$OUT" || exit 2
set -o pipefail
main 2>&1 | tee "$OUT/device_run.log"
