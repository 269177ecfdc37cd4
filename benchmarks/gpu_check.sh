#!/usr/bin/env bash
# GPU readiness check: one command on a CUDA machine, one JSON and one log, in about 8 minutes.
#
#   bash benchmarks/gpu_check.sh OUTDIR           # on a CUDA machine
#   bash benchmarks/gpu_check.sh --smoke OUTDIR   # on any CPU, tiny sizes (the test suite runs this)
#
# Steps (each under its own time limit, so a hung step cannot eat the others' time):
#   pytest     pytest -m gpu (the tests marked as needing a CUDA device)
#   extract    ViT-H+/16 extraction, random weights at full size: images/s and share of the measured
#              bf16 matmul peak (benchmarks/bench_extract_gpu.py)
#   align      University-1652-size alignment, stream 1 + ISMS schedules extrapolated from timed
#              epochs (benchmarks/bench_align.py time --device cuda); goal <= 60 s
#   evaluate   exact 37,855 x 160,000 evaluation against the per-query loop
#              (benchmarks/bench_retrieve.py); goal >= 100x
#   sweep      `pipeline sweep` of 8 alignment points (2 methods x 4 seeds) on the demo's entries
# Writes OUTDIR/gpu_check.json (every number and each step's exit code and seconds),
# OUTDIR/gpu_check.log (every step's output) and OUTDIR/<step>.txt. Exit code 0 when every step ran.
# PYTHON (default python3) is the interpreter with this project installed.
set -u

smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh [--smoke] OUTDIR" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=${PYTHON:-python3}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
log="$out/gpu_check.log"
steps="$out/steps.tsv"
: >"$log"
: >"$steps"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# The sweep's entries go into a cache of the check's own, never the user's.
export PIPELINE_CACHE_DIR="$out/cache"

if [ "$smoke" = 1 ]; then
    device=cpu
    export OMP_NUM_THREADS=1
else
    device=cuda
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "error: no CUDA device visible to torch; run on a GPU machine, or use --smoke on a CPU" >&2
        exit 2
    fi
fi

# step NAME LIMIT_S COMMAND...: run it, its output into NAME.txt and the log, its rc and seconds into steps.tsv
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" >>"$log"
    local t0 t1 rc
    t0=$(date +%s%N)
    (cd "$root" && timeout "$limit" "$@") >"$out/$name.txt" 2>&1
    rc=$?
    t1=$(date +%s%N)
    cat "$out/$name.txt" >>"$log"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(((t1 - t0) / 1000000))" >>"$steps"
    echo "== $name: exit $rc" >>"$log"
}

if [ "$smoke" = 1 ]; then
    # Limits are generous: they stop a hung step, and a shared CPU can be several times slower than idle.
    step pytest 300 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_metrics.py
    step extract 300 "$py" benchmarks/bench_extract_gpu.py --small --images 16 --device cpu
    # University-1652 size takes minutes per epoch on a CPU: the smoke mode times the same trainer on
    # the synthetic benchmark's smallest world instead (the JSON says which).
    step align 300 "$py" benchmarks/bench_align_synthetic.py --tiny --methods geoalign \
        --stream1-params '{"epochs": 2}' --workdir "$out/align_work" --json "$out/align.json" --table-only
    step evaluate 300 "$py" benchmarks/bench_retrieve.py --quick --device cpu --loop-sample 20
    sweep_args=(
        "dataset.synthetic.n_locations=4" "dataset.synthetic.n_distractors=2"
        "dataset.synthetic.views_per_location=2" "dataset.synthetic.size=64" "preprocess.resize=64"
        "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2}" "backbone.layers=[0,1]"
        "align.params.isms={out_dim: 16, epochs: 2, batch_size: 8}"
        "align.params.epochs=2" "align.params.vec_dim=32" "extract.batch_size=4" "sweep.n_jobs=2"
    )
else
    step pytest 90 "$py" -m pytest -q -p no:cacheprovider -m gpu tests
    step extract 150 "$py" benchmarks/bench_extract_gpu.py --images 1024 --device cuda
    step align 100 "$py" benchmarks/bench_align.py time --device cuda --epochs 3 --isms-epochs 2
    step evaluate 90 "$py" benchmarks/bench_retrieve.py --device cuda --loop-sample 100
    sweep_args=("backbone.device=cuda" "align.device=cuda" "retrieve.device=cuda")
fi
[ "$smoke" = 1 ] && sweep_limit=400 || sweep_limit=150
step sweep "$sweep_limit" "$py" -m pipeline --quiet sweep demo "${sweep_args[@]}" retrieve.report=false \
    "out=$out/sweep" --grid "align.method=[isms,geoalign]" --grid "seed=[0,1,2,3]"

"$py" - "$out" "$smoke" "$device" <<'PYEOF'
"""Collect the steps' numbers into gpu_check.json."""
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

out, smoke, device = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]


def text(name: str) -> str:
    p = out / f"{name}.txt"
    return p.read_text(errors="replace") if p.is_file() else ""


def num(pattern: str, s: str, group: int = 1):
    m = re.search(pattern, s, re.M)
    return float(m.group(group).replace(",", "")) if m else None


steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"exit_code": int(rc), "seconds": round(int(secs) / 1000, 2)}

t = text("pytest")
pytest = {k: int(num(rf"(\d+) {k}", t) or 0) for k in ("passed", "skipped", "failed", "deselected", "error")}

t = text("extract")
extract = {
    "images_per_s": num(r"^pipeline, end to end \(\S+\)\s+([\d.]+)", t),
    "bf16_peak_share_percent": num(r"^pipeline, end to end \(\S+\)\s+[\d.]+\s+([\d.]+) %", t),
    "peak_tflops": num(r"^peak \S+ matmul \(\d+³\):\s+([\d.]+) TFLOP/s", t),
    "model": "small random DINOv3 (--small)" if smoke else "dinov3_vith16plus, random weights, 512x512",
}

if smoke:
    a = json.loads((out / "align.json").read_text()) if (out / "align.json").is_file() else {}
    row = a.get("rows", {}).get("geoalign", {})
    align = {"source": "bench_align_synthetic.py --tiny (2 epochs)", "stream1_s": row.get("wall_s"), "total_s": row.get("wall_s")}
else:
    t = text("align")
    m = re.search(r"^\{.*^\}", t, re.M | re.S)
    a = json.loads(m.group(0)) if m else {}
    total_min = a.get("total_min")
    align = {
        "source": "bench_align.py time --device cuda (University-1652 size, extrapolated)",
        "stream1_300_epochs_s": a.get("stream1_300_epochs_min") and a["stream1_300_epochs_min"] * 60,
        "isms_full_s": a.get("isms_full_min") and a["isms_full_min"] * 60,
        "total_s": total_min and total_min * 60,
        "goal_s": 60,
    }
    align["meets_goal"] = align["total_s"] is not None and align["total_s"] <= 60

t = text("evaluate")
evaluate = {
    "case": num(r"case: ([\d,]+) queries", t),
    "n_gallery": num(r"queries x ([\d,]+) gallery", t),
    "evaluate_s": num(r"^evaluate \(end to end\):\s+([\d.]+) s", t),
    "loop_s_extrapolated": num(r"-> ([\d,.]+) s extrapolated", t),
    "speedup_vs_loop": num(r"= ([\d,.]+)x evaluate's time", t),
    "goal_speedup": 100,
}
evaluate["n_queries"] = evaluate.pop("case")
evaluate["meets_goal"] = evaluate["speedup_vs_loop"] is not None and evaluate["speedup_vs_loop"] >= 100

rows = []
if (out / "sweep" / "sweep.csv").is_file():
    with open(out / "sweep" / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
sweep = {
    "points": len(rows),
    "complete": sum(r["status"] == "complete" for r in rows),
    "seconds": steps.get("sweep", {}).get("seconds"),
    "align_s": [float(r["align_s"]) for r in rows if r.get("align_s")],
    "R@1": {f"{r['align.method']} seed {r['seed']}": float(r["R@1"]) for r in rows if r.get("R@1")},
}

total = sum(s["seconds"] for s in steps.values())
result = {
    "mode": "smoke" if smoke else "gpu",
    "device": device,
    "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    "load_avg": list(os.getloadavg()),
    "total_s": round(total, 2),
    "goal_total_s": 480,
    "steps": steps,
    "pytest_gpu": pytest,
    "extract": extract,
    "align": align,
    "evaluate": evaluate,
    "sweep": sweep,
    "ok": all(s["exit_code"] == 0 for s in steps.values()),
}
try:
    import torch

    result["torch"] = torch.__version__
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
except Exception:  # the JSON is still written without them
    pass
tmp = out / ".gpu_check.json.tmp"
tmp.write_text(json.dumps(result, indent=2) + "\n")
os.replace(tmp, out / "gpu_check.json")
print(json.dumps({k: result[k] for k in ("mode", "total_s", "ok")}))
PYEOF
rc=$?
[ $rc -ne 0 ] && exit $rc
"$py" -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))['ok'] else 1)" "$out/gpu_check.json"
