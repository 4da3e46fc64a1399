#!/usr/bin/env bash
# GPU smoke test (a few minutes on a CUDA machine): the paths CPU-only CI cannot exercise.
#   1. CoOp on world:clip, device=cuda, bf16 autocast
#   2. VPT-deep on world:mae, device=cuda, bf16 autocast
#   3. torchrun with 2 processes (NCCL), one GPU each; skipped with a message on a 1-GPU machine, since NCCL
#      refuses two ranks on one GPU
# and writes what passed as JSON (default benchmarks/results/gpu_smoke.json).
#
#   scripts/gpu_smoke.sh [--cpu] [--out FILE]
#
# --cpu runs the same three steps on the CPU (device=cpu, bf16 autocast on CPU, gloo for torchrun): a dry run of the script itself on
# a machine without a GPU; its JSON says device "cpu" and proves nothing about CUDA.
set -uo pipefail

PYTHON=${PYTHON:-python}
OUT=benchmarks/results/gpu_smoke.json
DEVICE=cuda
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) DEVICE=cpu; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--cpu] [--out FILE]" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

if [[ "$DEVICE" == cuda ]]; then
  GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
  if [[ "$GPUS" -lt 1 ]]; then
    echo "gpu_smoke: torch sees no CUDA GPU here; run with --cpu for a dry run of the script." >&2
    exit 2
  fi
else
  GPUS=0
fi
# Small enough for minutes: 2 shots per class, 1 epoch, the world's own tiny backbones.
COMMON=(dataset=world-object shots=2 seed=1 train.epochs=1 "train.device=$DEVICE" train.precision=bf16
        train.progress=false)

record() {  # name status seconds message
  "$PYTHON" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "status": sys.argv[2],
  "seconds": round(float(sys.argv[3]), 1), "message": sys.argv[4]}))' "$1" "$2" "$3" "$4" >> "$RESULTS"
  echo "gpu_smoke: $1: $2 (${3%.*} s) $4"
}

step() {  # name command...
  local name=$1; shift
  local started=$SECONDS
  if timeout 240 "$@" > "$WORK/$name.log" 2>&1; then
    record "$name" passed $((SECONDS - started)) ""
  else
    record "$name" failed $((SECONDS - started)) "$(tail -n 5 "$WORK/$name.log" | tr '\n' ' ')"
  fi
}

step coop-bf16 "$PYTHON" -m vlprompt.cli train method=coop backbone=world:clip "${COMMON[@]}" --out "$WORK/coop"
step vpt-deep-bf16 "$PYTHON" -m vlprompt.cli train method=vpt-deep backbone=world:mae "${COMMON[@]}" \
  --out "$WORK/vpt"
if [[ "$DEVICE" == cpu || "$GPUS" -ge 2 ]]; then
  step torchrun-2 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 -m vlprompt.cli train \
    method=vpt-deep backbone=world:mae "${COMMON[@]}" --out "$WORK/ddp"
else
  record torchrun-2 skipped 0 "1 GPU: NCCL does not allow 2 processes on one GPU; needs 2 or more GPUs"
fi

mkdir -p "$(dirname "$OUT")"
"$PYTHON" - "$RESULTS" "$OUT" "$DEVICE" "$GPUS" <<'EOF'
import json, os, platform, sys
import torch
lines, out, device, gpus = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
steps = [json.loads(line) for line in open(lines)]
report = {
    "device": device,
    "gpus": gpus,
    "gpu_name": torch.cuda.get_device_name(0) if gpus else None,
    "torch": torch.__version__,
    "host": platform.node(),
    "steps": steps,
    "all_passed": all(s["status"] in ("passed", "skipped") for s in steps),
}
with open(out + ".tmp", "w") as handle:  # atomic: a reader never sees half a report
    json.dump(report, handle, indent=2)
    handle.write("\n")
os.replace(out + ".tmp", out)
print(f"gpu_smoke: wrote {out}")
sys.exit(0 if report["all_passed"] else 1)
EOF
