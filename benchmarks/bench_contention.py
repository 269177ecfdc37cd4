"""Fair share on a busy CPU: training and extraction alone and beside two CPU-bound busy loops.

python benchmarks/bench_contention.py [--repeat 3] [--s1-epochs 15] [--isms-epochs 10] [--conditions alone loaded later] [--json OUT]

Workloads (each timed in a fresh child process, so the OpenMP runtime starts with the settings
under test):

* ``stream1``: GeoAlign stream 1 (what ``align.method=geoalign`` trains: ``train_stream1`` with the
  stage's widths for 256-d input, vec_dim 512, and ``align.dtype=auto``) on 400 satellite + 1,800
  drone synthetic descriptors (``align.synthetic``), ``--s1-epochs`` epochs (one step each).
* ``isms``: ISMS (``train_isms``) on the same 2,200 rows, two 256-d layers, ``--isms-epochs`` epochs.
* ``extract``: the demo's extraction (``configs/demo.yaml``: 300 synthetic images, DINOv3 ViT-S/16
  with random weights, 128 px, layers 10+11, GeM) into a fresh cache, network built included;
  ``--locations`` takes fewer of its 40 locations (6 drone views + 1 satellite each, 20 distractors).

Modes, both in the same run:

* ``old``: torch's defaults: the OpenMP runtime loaded with no wait policy set (its threads spin
  while they wait) and as many threads as the affinity mask has cores; the child imports torch
  before ``cvgl`` so the package's settings cannot apply.
* ``new``: what the tool does: the child imports ``cvgl`` first (``core.threads.prepare_openmp_env``:
  ``OMP_WAIT_POLICY=PASSIVE`` when other work holds the cores, else ``GOMP_SPINCOUNT=20000``) and
  applies ``core.threads.apply_thread_policy`` as the CLI does at startup.

Conditions: ``alone``; ``loaded`` = beside two ``python -c "while True: pass"`` processes started
0.5 s before the child and killed just after; ``later`` = the same two loops started 1 s after the
child (load that arrives once the tool has chosen its settings). Cells are interleaved (repeat × workload × mode ×
condition) so a drift in the machine's background load reaches every cell; the table gives the
median of ``--repeat`` runs and loaded / alone per mode, and new / old when alone (the cost of the
change on a quiet machine). Load averages before and after are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("stream1", "isms", "extract")
MODES = ("old", "new")
CONDITIONS = ("alone", "loaded", "later")
BUSY = "while True: pass"


def busy_loop() -> subprocess.Popen:
    """A CPU-bound process that dies with this one (Linux parent-death signal), even if it is killed."""

    def die_with_parent() -> None:
        import ctypes
        import signal

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    return subprocess.Popen([sys.executable, "-c", BUSY], preexec_fn=die_with_parent)


def wait_setting() -> str:
    if os.environ.get("OMP_WAIT_POLICY"):
        return os.environ["OMP_WAIT_POLICY"]
    if os.environ.get("GOMP_SPINCOUNT"):
        return f"spin {os.environ['GOMP_SPINCOUNT']}"
    return "(unset)"


# -- child: one timed workload ----------------------------------------------------------------------
def extract_overrides(data: Path, locations: int) -> list[str]:
    """The demo's extraction (configs/demo.yaml) with ``locations`` of its 40 locations."""
    return [f"dataset.root={data / 'images'}", f"dataset.synthetic.n_locations={locations}"]


def child(workload: str, mode: str, data: Path, s1_epochs: int, isms_epochs: int, locations: int) -> dict:
    # The order of these imports is the experiment: "old" loads torch (and OpenMP) before cvgl
    # could set anything, "new" imports cvgl first, as the CLI does.
    if mode == "old":
        import torch  # noqa: F401
    policy = wait_setting()
    from cvgl.core.threads import apply_thread_policy  # noqa: I001

    import torch

    if mode == "new":
        apply_thread_policy()
        policy = wait_setting()  # what OpenMP read at `import torch`
    threads = torch.get_num_threads()
    if workload == "extract":
        from cvgl.cache.store import CacheStore
        from cvgl.configs.schema import load_config
        from cvgl.extract.runner import run_extraction

        cfg = load_config("demo", extract_overrides(data, locations))
        with tempfile.TemporaryDirectory(dir=data) as tmp:
            t0 = time.perf_counter()
            run_extraction(cfg, CacheStore(tmp))
            seconds = time.perf_counter() - t0
    else:
        from cvgl.align.training import TrainerOptions, compute_dtype

        d = torch.load(data / "descriptors.pt", weights_only=True)
        dtype = compute_dtype("auto", "cpu")
        if workload == "stream1":
            from cvgl.align.geoalign import Stream1Config
            from cvgl.align.methods.stream1 import adapter_dims
            from cvgl.align.train_stream1 import train_stream1

            dims = adapter_dims({"in_dim": d["sat"].shape[1]}, {})
            cfg = Stream1Config(**dims, epochs=s1_epochs)
            t0 = time.perf_counter()
            train_stream1(d["sat"], d["dro"], cfg, opts=TrainerOptions(dtype=dtype))
            seconds = time.perf_counter() - t0
        else:
            from cvgl.align.isms import ISMSConfig, isms_input, train_isms

            x = isms_input([d["layer0"], d["layer1"]])
            cfg = ISMSConfig(out_dim=x.shape[1] // 2, epochs=isms_epochs)
            t0 = time.perf_counter()
            train_isms(x, cfg, opts=TrainerOptions(dtype=dtype))
            seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "threads": threads,
        "wait_policy": policy,
    }


# -- parent -------------------------------------------------------------------------------------------
def prepare(data: Path, locations: int) -> None:
    """Synthetic descriptors (400 satellites + 1,800 drones, 256-d, two layers) and the demo images."""
    import torch
    from cvgl.align.synthetic import WorldConfig, make_splits
    from cvgl.cache.store import CacheStore
    from cvgl.configs.schema import load_config
    from cvgl.extract.roots import image_lists

    _, _, train = make_splits(
        WorldConfig(dim=256), n_locations=360, views_per_location=5, n_distractors=0, n_train_locations=360
    )
    layers = train.layers
    sat = [torch.from_numpy(train.satellite[layer]) for layer in layers]
    dro = [torch.from_numpy(train.drone[layer]) for layer in layers]
    # 360 located satellites + 40 extra tiles (the train split has no distractors) = 400.
    extra = [
        torch.nn.functional.normalize(torch.randn(40, 256, generator=torch.Generator().manual_seed(i)), dim=-1)
        for i in (0, 1)
    ]
    sat = [torch.cat([s, e]) for s, e in zip(sat, extra)]
    torch.save(
        {
            "sat": sat[1].float(),
            "dro": dro[1].float(),
            "layer0": torch.cat([sat[0], dro[0]]).float(),
            "layer1": torch.cat([sat[1], dro[1]]).float(),
        },
        data / "descriptors.pt",
    )
    cfg = load_config("demo", extract_overrides(data, locations))
    image_lists(cfg, CacheStore(data / "gen"))  # writes the synthetic images once


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "GOMP_SPINCOUNT",
              "CVGL_OPENMP_CHOICE"):
        env.pop(k, None)
    return env


def run_cell(workload: str, mode: str, condition: str, data: Path, args) -> dict:
    busy: list[subprocess.Popen] = []
    starter = None
    try:
        if condition == "loaded":
            busy = [busy_loop() for _ in range(2)]
            time.sleep(0.5)
        elif condition == "later":
            import threading

            def start_later() -> None:
                time.sleep(1.0)
                busy.extend(busy_loop() for _ in range(2))

            starter = threading.Thread(target=start_later)
            starter.start()
        cmd = [
            sys.executable, __file__, "--child", workload, "--mode", mode, "--data", str(data),
            "--s1-epochs", str(args.s1_epochs), "--isms-epochs", str(args.isms_epochs),
            "--locations", str(args.locations),
        ]
        try:
            res = subprocess.run(
                cmd, env=child_env(), capture_output=True, text=True, check=False, timeout=args.cap
            )
        except subprocess.TimeoutExpired:
            # A collapsed run is stopped at the cap: its time is then a lower bound.
            return {"seconds": float(args.cap), "capped": True, "threads": None, "wait_policy": None}
    finally:
        if starter is not None:
            starter.join()
        for p in busy:
            p.kill()
            p.wait()
    if res.returncode != 0:
        raise SystemExit(f"{workload}/{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = text.splitlines()
    model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")
    flags = next((x.split(":", 1)[1].split() for x in lines if x.startswith("flags")), [])
    keep = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return f"{model}; {' '.join(keep)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--s1-epochs", type=int, default=15)
    ap.add_argument("--isms-epochs", type=int, default=10)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    ap.add_argument(
        "--locations", type=int, default=40, help="extract: demo locations (40 = the demo's 300 images)"
    )
    ap.add_argument("--cap", type=float, default=300.0, help="stop a run after this many seconds (a lower bound)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mode, Path(args.data), args.s1_epochs, args.isms_epochs, args.locations)))
        return

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    cells: dict[tuple[str, str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as tmp:
        data = Path(tmp)
        prepare(data, args.locations)
        for r in range(args.repeat):
            for w in args.workloads:
                for m in args.modes:
                    # Alternate which condition goes first, so neither always follows the other.
                    conds = [c for c in CONDITIONS if c in args.conditions]
                    for c in conds if r % 2 == 0 else conds[::-1]:
                        out = run_cell(w, m, c, data, args)
                        out["load_1m"] = os.getloadavg()[0]
                        cells.setdefault((w, m, c), []).append(out)
                        print(
                            f"[{r + 1}/{args.repeat}] {w:8s} {m:3s} {c:6s} {out['seconds']:7.2f} s"
                            f"{' (cap)' if out.get('capped') else ''} "
                            f"(threads {out['threads']}, wait {out['wait_policy']}, load {out['load_1m']:.2f})",
                            file=sys.stderr,
                            flush=True,
                        )
    load_after = os.getloadavg()
    med = {k: statistics.median(v["seconds"] for v in runs) for k, runs in cells.items()}
    rows = []
    for w in args.workloads:
        for m in args.modes:
            alone = med[(w, m, "alone")]
            row = {
                "workload": w,
                "mode": m,
                "threads": next((x["threads"] for x in cells[(w, m, "alone")] if x["threads"]), None),
                "wait_policy": {
                    c: next((x["wait_policy"] for x in cells[(w, m, c)] if x["wait_policy"]), None) for c in args.conditions
                },
                "capped_runs": sum(bool(x.get("capped")) for c in args.conditions for x in cells[(w, m, c)]),
                "alone_s": alone,
            }
            for c in args.conditions:
                row[f"{c}_runs"] = [round(x["seconds"], 2) for x in cells[(w, m, c)]]
                if c != "alone":
                    row[f"{c}_s"] = med[(w, m, c)]
                    row[f"{c}_over_alone"] = med[(w, m, c)] / alone
            if m == "new" and "old" in args.modes:
                row["alone_new_over_old"] = alone / med[(w, "old", "alone")]
            rows.append(row)
    result = {
        "started": started,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu_flags(),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "settings": {
            "repeat": args.repeat, "s1_epochs": args.s1_epochs, "isms_epochs": args.isms_epochs, "cap_s": args.cap,
            "extract_locations": args.locations,
        },
        "rows": rows,
    }
    extra = [c for c in args.conditions if c != "alone"]
    heads = {"loaded": "beside 2 busy loops", "later": "loops start after 1 s"}
    print(
        "| workload | mode | threads | wait (alone / "
        + " / ".join(extra)
        + ") | alone (median) | "
        + " | ".join(f"{heads[c]} | {c} / alone" for c in extra)
        + " | alone new / old | runs stopped at the cap |"
    )
    print("|---|---|---:|---|---:|" + "---:|---:|" * len(extra) + "---:|---:|")
    for row in rows:
        ratio = f"{row['alone_new_over_old']:.2f}" if "alone_new_over_old" in row else ""
        waits = " / ".join(str(row["wait_policy"].get(c)) for c in args.conditions)
        cells_txt = " | ".join(f"{row[f'{c}_s']:.2f} s | **{row[f'{c}_over_alone']:.2f}×**" for c in extra)
        print(
            f"| {row['workload']} | {row['mode']} | {row['threads']} | {waits} | {row['alone_s']:.2f} s | "
            f"{cells_txt} | {ratio} | {row['capped_runs']} |"
        )
    print(f"load before {load_before}, after {load_after}; {result['cpu']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
