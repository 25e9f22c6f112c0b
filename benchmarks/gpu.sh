#!/usr/bin/env bash
# The GPU run of tfree, as one prepared script: conformance on cuda, the fused kernels
# compiled and checked, the N = 65 536 benchmark; results under docs/data/gpu/.
# Each step runs under its own time budget (a GPU session has ~10 min per command and
# 15 min in all: the whole run targets < 8 min) and ends in one verdict line.
# `--dry` runs the same steps on the CPU at tiny sizes (CI), into a temporary directory.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash benchmarks/gpu.sh [--dry] [--out DIR] [--steps LIST] [--inf-cl-path DIR]

On a machine with an NVIDIA GPU, runs in turn (each step under a time budget):
  env          environment.json: GPU, driver, CUDA, library versions, git commit
  conformance  python -m conformance on cuda for torch, jax and tensorflow (those
               installed; a backend that sees no GPU is reported as skipped), every
               mode and dtype of the representative matrix -> conformance.json
  kernels      the fused kernels (kernel="fused": Triton for tfree_torch, Pallas for
               tfree_jax) compiled and run once per case against kernel="portable"
               -> kernels.json
  bench        loss + gradient of tfree_torch.info_nce(q, k) at N = 65 536, D = 512,
               float32 and bfloat16 (as shipped, untiled, tiled, fused), against the
               plain PyTorch formula where it fits and Inf-CL's cal_inf_loss where
               inf_cl imports; ms and TFLOP/s (8·N²·D per loss + gradient)
               -> benchmark.json, benchmark.md
then writes summary.json and prints a PASS/FAIL verdict line (exit status 0/1).

options:
  --dry              the same steps on the CPU, tiny sizes (N = 256, D = 32),
                     conformance of torch only (eager, float32), the kernels in
                     Triton's / Pallas' interpreters; also TFREE_GPU_DRY=1
  --out DIR          where the results go (default: docs/data/gpu/; with --dry a new
                     temporary directory, and never docs/data/gpu/)
  --steps LIST       comma-separated subset of env,conformance,kernels,bench
  --inf-cl-path DIR  a directory holding the inf_cl package (an unpacked wheel), put
                     on PYTHONPATH for the benchmark (the GPU machine may be offline)
  -h, --help         this message

environment: PYTHON (default python); TFREE_GPU_BUDGET_ENV, _CONFORMANCE, _KERNELS,
_BENCH: seconds per step (default 20, 200, 90, 150; dry: 60 each).
EOF
}

die() {
    echo "gpu.sh: $*" >&2
    exit 2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY=${TFREE_GPU_DRY:-0}
[[ $DRY == 1 || $DRY == 0 ]] || die "TFREE_GPU_DRY must be 0 or 1, not '$DRY'"
OUT=""
STEPS="env,conformance,kernels,bench"
INF_CL_PATH=""
while (($#)); do
    case $1 in
        --dry) DRY=1 ;;
        --out) (($# >= 2)) || die "--out needs a directory"; OUT=$2; shift ;;
        --out=*) OUT=${1#--out=} ;;
        --steps) (($# >= 2)) || die "--steps needs a list"; STEPS=$2; shift ;;
        --steps=*) STEPS=${1#--steps=} ;;
        --inf-cl-path) (($# >= 2)) || die "--inf-cl-path needs a directory"; INF_CL_PATH=$2; shift ;;
        --inf-cl-path=*) INF_CL_PATH=${1#--inf-cl-path=} ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
    shift
done
for step in ${STEPS//,/ }; do
    case $step in env | conformance | kernels | bench) ;; *) die "unknown step '$step'" ;; esac
done

PY=${PYTHON:-python}
if ((DRY)); then
    OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/tfree-gpu-dry.XXXXXX")}
    DRY_FLAG=(--dry)
    # a dry run shares CI's (or a developer's) cores: one thread per process
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
    B_ENV=${TFREE_GPU_BUDGET_ENV:-60} B_CONF=${TFREE_GPU_BUDGET_CONFORMANCE:-60}
    B_KERN=${TFREE_GPU_BUDGET_KERNELS:-60} B_BENCH=${TFREE_GPU_BUDGET_BENCH:-60}
else
    OUT=${OUT:-$ROOT/docs/data/gpu}
    DRY_FLAG=()
    command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
        || die "no NVIDIA GPU here (nvidia-smi); use --dry for the CPU dry run"
    # 20 + 200 + 90 + 150 s: at most 7 min 40 s, inside the 8 min the run targets
    B_ENV=${TFREE_GPU_BUDGET_ENV:-20} B_CONF=${TFREE_GPU_BUDGET_CONFORMANCE:-200}
    B_KERN=${TFREE_GPU_BUDGET_KERNELS:-90} B_BENCH=${TFREE_GPU_BUDGET_BENCH:-150}
fi
OUT=$(realpath -m "$OUT")
if ((DRY)) && [[ $OUT == "$(realpath -m "$ROOT/docs/data/gpu")" ]]; then
    die "a dry run never writes into docs/data/gpu/ (its CPU numbers would replace the GPU's)"
fi
mkdir -p "$OUT/logs"

cd "$ROOT"
export PYTHONPATH="$ROOT:$ROOT/backends${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# JAX would otherwise take 75 % of the GPU's memory in every process that touches it
export XLA_PYTHON_CLIENT_PREALLOCATE=false

STEP_ARGS=()
# run_step NAME BUDGET COMMAND...: COMMAND under `timeout BUDGET`, its output also in
# logs/NAME.log; records NAME=rc:seconds:budget for the verdict, and goes on after a
# failure so that the other steps' results still come back.
run_step() {
    local name=$1 budget=$2 start=$SECONDS rc
    shift 2
    echo "== $name (budget ${budget} s)"
    set +e
    timeout --kill-after=10 "$budget" "$@" 2>&1 | tee "$OUT/logs/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    echo "== $name: exit status $rc after $((SECONDS - start)) s"
    STEP_ARGS+=(--step "$name=$rc:$((SECONDS - start)):$budget")
}

wanted() { [[ ,$STEPS, == *,$1,* ]]; }

if ((DRY)); then KIND="dry run on the CPU"; else KIND="GPU run"; fi
echo "gpu.sh: $KIND, results in $OUT"
BENCH=("$PY" -m benchmarks.bench_gpu)
if wanted env; then
    run_step env "$B_ENV" "${BENCH[@]}" env --out "$OUT" "${DRY_FLAG[@]}"
fi
if wanted conformance; then
    if ((DRY)); then
        # the quickest representative slice: one backend, eager, float32 (~5 s)
        CONF=(--backend torch --device cpu --mode eager --dtype float32)
    else
        # CUDA-capable backends; numpy and array_api_strict have no GPU to test
        CONF=(--backend torch,jax,tensorflow --device cuda)
    fi
    run_step conformance "$B_CONF" "$PY" -m conformance "${CONF[@]}" \
        --stall-timeout "$((B_CONF - 15))" --json "$OUT/conformance.json"
fi
if wanted kernels; then
    run_step kernels "$B_KERN" "${BENCH[@]}" kernels --out "$OUT" "${DRY_FLAG[@]}" \
        --budget "$((B_KERN - 10))"
fi
if wanted bench; then
    if [[ -n $INF_CL_PATH ]]; then
        [[ -d $INF_CL_PATH ]] || die "--inf-cl-path: no directory '$INF_CL_PATH'"
        INF_CL_PATH=$(cd "$INF_CL_PATH" && pwd)
    fi
    PYTHONPATH="${INF_CL_PATH:+$INF_CL_PATH:}$PYTHONPATH" \
        run_step bench "$B_BENCH" "${BENCH[@]}" bench --out "$OUT" "${DRY_FLAG[@]}" \
        --budget "$((B_BENCH - 10))"
fi
# the verdict line is the last line of the output
"${BENCH[@]}" verdict --out "$OUT" "${DRY_FLAG[@]}" "${STEP_ARGS[@]}"
