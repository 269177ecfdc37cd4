"""Alignment methods on synthetic cross-view descriptors, through the real alignment stage.

python benchmarks/bench_align_synthetic.py [--quick] [--transductive] [--select] [--world JSON] [--json OUT]
    Generates a world (align.synthetic: drone = rotated, tanh-warped, shifted, noisy satellite),
    a test split (query drones, gallery satellites with distractors) and a train split (other
    locations), writes them into a fresh cache as extraction-like entries, then runs
    ``align.stage.run_alignment`` for isms, geoalign (stream 1), fusion, emcvgl and supervised
    (stream 1 trained with the true pairs: the bound), and evaluates every aligned entry with
    ``retrieve.metrics.evaluate`` under the u1652 protocol. Also reports raw descriptors and the
    generator's oracle (the true distortion applied to each satellite: a ceiling for reference).

python benchmarks/bench_align_synthetic.py isms-curve [--u1652-size --dim 256] [--epochs 50] [--every 5]
    ISMS convergence: trains ISMS once (``cvgl.align.isms.train_isms``, what the stage calls) and evaluates
    the model handed to save_state after epochs 1, 2, 3 and every --every: loss terms, R@1/AP of
    the ISMS descriptors on the test split, and the correlation of its pairwise similarities with
    the final model's. --u1652-size: 701 satellites + 37,854 drones per split (38,555 training rows,
    38 mini-batches of 1024 per epoch, as on University-1652).

Method hyperparameters (align.params): by default SELECTED below, the candidates --select chose on a
validation split (other locations of the same world; labels used for the choice only, never the
test split); --release-params for the releases' values; --stream1-params / --supervised-params /
--emcvgl-params (JSON) to set them. ISMS: the AlignConfig defaults except out_dim = half its input
width (GeoAlign: 2560 → 1280). Results, commands and machine: benchmarks/README_align_synthetic.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cvgl.align.stage import run_alignment  # noqa: E402
from cvgl.align.synthetic import WorldConfig, align_overrides, make_splits, write_cache  # noqa: E402
from cvgl.cache.store import CacheStore  # noqa: E402
from cvgl.configs.schema import load_config  # noqa: E402
from cvgl.core.run_folder import RunFolder  # noqa: E402
from cvgl.retrieve.metrics import evaluate  # noqa: E402

METHODS = ("isms", "geoalign", "fusion", "emcvgl", "supervised")
SIZES = {
    # test: locations × drone views + distractor satellites; train: as many other locations
    "full": dict(n_locations=300, views_per_location=20, n_distractors=150),
    "quick": dict(n_locations=100, views_per_location=10, n_distractors=50),
    "tiny": dict(n_locations=60, views_per_location=8, n_distractors=30),  # the test's size
}
NAME = "syn"


def size_name(args) -> str:
    return "tiny" if getattr(args, "tiny", False) else "quick" if args.quick else "full"


def metrics(q, ql, g, gl) -> dict:
    m, _ = evaluate(q, ql, g, gl, "u1652", ks=(1, 5, 10))
    return {k: float(m[k]) for k in ("R@1", "R@5", "R@10", "AP")}


# Candidate align.params, selected on a validation split (other locations of the same world, labels
# used for the selection only, never the test split): the release values first.
CANDIDATES = {
    "stream1": [{}, {"lr": 1e-3}, {"lr": 2e-3, "dro_num": 2}],
    "emcvgl": [{}, {"lr": 1e-3}, {"lr": 2e-3, "dro_num": 2}],
}
# What --select chose on the full-size validation split of the main world, non-transductive
# (benchmarks/README_align_synthetic.md); the defaults of this script. --release-params uses the
# releases' values instead.
SELECTED = {
    "stream1": {"lr": 2e-3, "dro_num": 2},
    "supervised": {"lr": 1e-3},
    "emcvgl": {"lr": 2e-3, "dro_num": 2},
}
FAMILY = {"geoalign": "stream1", "fusion": "stream1", "supervised": "supervised", "emcvgl": "emcvgl"}


def config_for(method: str, args, layers, out: Path, params: dict, eval_name: str = NAME, alias=None):
    ov = align_overrides(NAME, layers, train=not args.transductive) + [
        f"method={method}",
        f"seed={args.seed}",
        f"out={out}",
        f"align.params.isms.out_dim={args.dim}",
    ]
    if eval_name != NAME:
        ov += [
            f"align.query=[{','.join(f'{eval_name}.query_drone@{L}' for L in layers)}]",
            f"align.gallery=[{','.join(f'{eval_name}.gallery_satellite@{L}' for L in layers)}]",
        ]
    if alias:
        ov.append(f"align.alias={alias}")
    if params:  # ISMS's part stays: it is align.params.isms
        ov.append("align.params=" + json.dumps({**params, "isms": {"out_dim": args.dim}}))
    return load_config(None, ov)


def run_method(method: str, args, store: CacheStore, layers, out: Path, params: dict, **kw) -> dict:
    cfg = config_for(method, args, layers, out, params, **kw)
    run = RunFolder(cfg, "align", cache_root=store.root)
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = run_alignment(cfg, store, run)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    run.finish()
    ents = {a.view: store.open(a.key) for a in res}
    q, ql, _ = ents["query_drone"].read()
    g, gl, _ = ents["gallery_satellite"].read()
    hist = [json.loads(x) for x in (run.path / "history.jsonl").read_text().splitlines() if x]
    last = {}
    for h in hist:
        last[h["model"]] = h
    return {
        **metrics(q, ql, g, gl),
        "dim": int(q.shape[1]),
        "params": params,
        "wall_s": wall,
        "cpu_s": cpu,
        "reused": all(a.reused for a in res),
        "final": {m: {k: round(v, 4) for k, v in h.items() if k != "model"} for m, h in last.items()},
    }


def setup(args) -> tuple:
    size = SIZES[size_name(args)]
    wcfg = WorldConfig(**{"dim": args.dim, "seed": args.data_seed, **json.loads(args.world or "{}")})
    world, test, train = make_splits(wcfg, seed=args.data_seed + 1, **size)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_align_syn_"))
    store = CacheStore(work / "cache")
    write_cache(store, NAME, test, train)
    return size, world, test, train, work, store


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def select(args, world, store: CacheStore, layers, work: Path) -> dict:
    """Best candidate per family by R@1 on a validation split; returns {family: params, …, 'trials': …}."""
    size = SIZES[size_name(args)]
    val = world.sample(seed=args.data_seed + 101, split="test", first_label=200_000, **size)
    write_cache(store, "val", val)
    chosen: dict = {"trials": {}}
    for family, method in (("stream1", "geoalign"), ("supervised", "supervised"), ("emcvgl", "emcvgl")):
        cands = CANDIDATES["emcvgl" if family == "emcvgl" else "stream1"]
        trials = []
        for i, p in enumerate(cands):
            r = run_method(
                method,
                args,
                store,
                layers,
                work / "select" / f"{method}-{i}",
                p,
                eval_name="val",
                alias=f"val.{method}.{i}",
            )
            log(f"select {method} {p}: val R@1 {r['R@1']:.2f} AP {r['AP']:.2f}")
            trials.append({"params": p, "R@1": r["R@1"], "AP": r["AP"], "wall_s": r["wall_s"]})
        best = max(trials, key=lambda t: (t["R@1"], t["AP"]))
        chosen[family] = best["params"]
        chosen["trials"][family] = trials
    return chosen


def bench(args) -> dict:
    size, world, test, train, work, store = setup(args)
    L = test.layers[-1]
    rows = {
        "raw": metrics(test.drone[L], test.drone_labels, test.satellite[L], test.satellite_labels),
        "oracle": metrics(
            test.drone[L], test.drone_labels, world.oracle_gallery(test, L), test.satellite_labels
        ),
    }
    base = {k: {} for k in SELECTED} if args.release_params else SELECTED
    given = {
        "stream1": args.stream1_params,
        "supervised": args.supervised_params or args.stream1_params,
        "emcvgl": args.emcvgl_params,
    }
    params = {k: json.loads(v) if v else dict(base[k]) for k, v in given.items()}
    selection = None
    if args.select:
        selection = select(args, world, store, test.layers, work)
        params = {k: selection[k] for k in params}
    for method in args.methods:
        log(f"{method} …")
        p = params.get(FAMILY.get(method, ""), {})
        rows[method] = run_method(method, args, store, test.layers, work / "runs" / method, p)
        r = rows[method]
        log(f"    R@1 {r['R@1']:.2f} AP {r['AP']:.2f} ({r['wall_s']:.1f} s)")
    out = {
        "size": size,
        "dim": args.dim,
        "world": {k: (list(v) if isinstance(v, tuple) else v) for k, v in world.cfg.__dict__.items()},
        "transductive": args.transductive,
        "params": params,
        "selection": selection,
        "rows": rows,
        "workdir": str(work),
    }
    if "fusion" in rows and "supervised" in rows:
        out["fusion_over_supervised_R@1"] = rows["fusion"]["R@1"] / max(rows["supervised"]["R@1"], 1e-9)
    return out


def table(res: dict) -> str:
    sup = res["rows"].get("supervised", {}).get("R@1")
    lines = [
        "| descriptors | dim | R@1 | R@5 | R@10 | AP | % of supervised R@1 | train wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["rows"].items():
        frac = f"{100 * r['R@1'] / sup:.1f}" if sup else ""
        lines.append(
            f"| {name} | {r.get('dim', res['dim'])} | {r['R@1']:.2f} | {r['R@5']:.2f} | {r['R@10']:.2f} | {r['AP']:.2f} | {frac} | "
            + (f"{r['wall_s']:.1f}" if "wall_s" in r else "")
            + " |"
        )
    return "\n".join(lines)


def isms_curve(args) -> dict:
    """ISMS trained once (``train_isms``, the function the stage calls); the model handed to
    ``save_state`` after chosen epochs is evaluated on the test split: loss, R@1/AP, and how close
    its similarity structure already is to the final model's."""
    from cvgl.align.isms import ISMS, ISMSConfig, isms_input, train_isms
    from cvgl.align.training import TrainerOptions

    if args.u1652_size:
        size = dict(n_locations=701, views_per_location=54, n_distractors=250)
    else:
        size = SIZES[size_name(args)]
    wcfg = WorldConfig(**{"dim": args.dim, "seed": args.data_seed, **json.loads(args.world or "{}")})
    world, test, train = make_splits(wcfg, seed=args.data_seed + 1, **size)
    layers = test.layers
    x = torch.cat(
        [isms_input([torch.from_numpy(d[L]) for L in layers]) for d in (train.satellite, train.drone)]
    )
    n_q = min(args.max_queries, len(test.drone_labels))
    pick = torch.randperm(len(test.drone_labels), generator=torch.Generator().manual_seed(0))[:n_q]
    qx = isms_input([torch.from_numpy(test.drone[L])[pick] for L in layers])
    gx = isms_input([torch.from_numpy(test.satellite[L]) for L in layers])
    ql, gl = test.drone_labels[pick.numpy()], test.satellite_labels
    probe = torch.cat([qx[:1000], gx[:1000]])
    cfg = ISMSConfig(
        out_dim=args.dim * len(layers) // 2,
        epochs=args.epochs,
        **({"lr": args.isms_lr} if args.isms_lr else {}),
        **({"w_decor": args.isms_w_decor} if args.isms_w_decor is not None else {}),
    )
    marks = set(range(args.every, args.epochs + 1, args.every)) | {1, 2, 3, args.epochs}
    snaps: dict[int, dict] = {}
    losses: list[dict] = []
    stamps: list[float] = []

    def save_state(epoch: int, state: dict) -> None:
        stamps.append(time.perf_counter())
        if epoch in marks:
            snaps[epoch] = {k: v.clone() for k, v in state["model"].items()}

    t0 = time.perf_counter()
    train_isms(x, cfg, opts=TrainerOptions(seed=args.seed, on_epoch=lambda e, m: losses.append(m), save_state=save_state))
    train_s = time.perf_counter() - t0
    model = ISMS(x.shape[1], cfg.out_dim)
    rows = []
    final_gram = None
    for epoch in sorted(snaps, reverse=True):
        model.load_state_dict(snaps[epoch])
        model.eval()
        with torch.no_grad():
            q, g, p = model.encode(qx).numpy(), model.encode(gx).numpy(), model.encode(probe)
        gram = (p @ p.T).flatten()
        if final_gram is None:
            final_gram = gram
        agree = float(torch.corrcoef(torch.stack([gram, final_gram]))[0, 1])
        rows.append({"epoch": epoch, **losses[epoch - 1], **metrics(q, ql, g, gl), "gram_corr_final": agree})
    rows.sort(key=lambda r: r["epoch"])
    return {
        "size": size,
        "dim": args.dim,
        "world": {k: (list(v) if isinstance(v, tuple) else v) for k, v in world.cfg.__dict__.items()},
        "rows_train": int(x.shape[0]),
        "steps_per_epoch": -(-int(x.shape[0]) // min(cfg.batch_size, int(x.shape[0]))),
        "isms": {k: v for k, v in cfg.__dict__.items()},
        "n_queries": n_q,
        "train_s": train_s,
        "s_per_epoch": [b - a for a, b in zip([t0] + stamps[:-1], stamps)],
        "raw": metrics(test.drone[layers[-1]][pick.numpy()], ql, test.satellite[layers[-1]], gl),
        "curve": rows,
        "loss_per_epoch": [{k: round(v, 5) for k, v in m.items()} for m in losses],
    }


def curve_table(res: dict) -> str:
    lines = [
        "| epoch | loss | rec | decor | R@1 | AP | similarity corr. with final |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["curve"]:
        lines.append(
            f"| {r['epoch']} | {r['loss']:.4f} | {r['rec']:.4f} | {r['decor']:.4f} | {r['R@1']:.2f} | "
            f"{r['AP']:.2f} | {r['gram_corr_final']:.4f} |"
        )
    return "\n".join(lines)


def environment() -> dict:
    try:
        up = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        up = ""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()} {cpu or platform.processor()} {os.cpu_count()} cpus".strip(),
        "uptime": up,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", nargs="?", default="bench", choices=("bench", "isms-curve"))
    ap.add_argument("--quick", action="store_true", help="smaller data (about a minute)")
    ap.add_argument("--tiny", action="store_true", help="the size tests/e2e/test_align_benchmark.py runs")
    ap.add_argument("--transductive", action="store_true", help="train on the test entries themselves")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--world", default=None, help="JSON: WorldConfig overrides (difficulty sweeps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument(
        "--stream1-params", default=None, help="JSON: align.params for geoalign/fusion/supervised"
    )
    ap.add_argument("--emcvgl-params", default=None, help="JSON: align.params for emcvgl")
    ap.add_argument("--supervised-params", default=None, help="JSON: align.params for supervised")
    ap.add_argument(
        "--release-params",
        action="store_true",
        help="the releases' config values (lr, dro_num, …), not SELECTED; open-point choices keep their defaults",
    )
    ap.add_argument(
        "--select", action="store_true", help="choose align.params among CANDIDATES on a validation split"
    )
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--epochs", type=int, default=50, help="isms-curve: ISMS epochs")
    ap.add_argument("--isms-lr", type=float, default=None, help="isms-curve: ISMS lr (default ISMSConfig's)")
    ap.add_argument("--isms-w-decor", type=float, default=None, help="isms-curve: ISMS w_decor")
    ap.add_argument("--every", type=int, default=5, help="isms-curve: evaluate every N epochs")
    ap.add_argument("--u1652-size", action="store_true", help="isms-curve: 701 + 37,854 rows per split")
    ap.add_argument("--max-queries", type=int, default=5000, help="isms-curve: drone queries evaluated")
    ap.add_argument("--table-only", action="store_true", help="print only the table (stderr)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = environment()
    if args.cmd == "isms-curve":
        res = isms_curve(args)
    else:
        res = bench(args)
    res["environment"] = {**env, "uptime_end": environment()["uptime"]}
    text = json.dumps(res, indent=2)
    if not args.table_only:
        print(text)
    print(curve_table(res) if args.cmd == "isms-curve" else table(res), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
