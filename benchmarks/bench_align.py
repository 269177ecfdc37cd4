"""GeoAlign alignment: timing at University-1652 size (CPU by default, --device cuda), and a cross-check against GeoAlign's evaluate.py.

python benchmarks/bench_align.py time [--epochs 3] [--isms-epochs 1] [--threads N] [--device cuda]
    Stream 1 (release config) on 701 satellite + 37,854 drone random 1280-d descriptors and ISMS
    on the 2560-d concatenation of two layers for all 38,555 images. Times a few epochs and
    extrapolates to the release schedules (300 stream-1 epochs, ISMSConfig.epochs ISMS epochs).
    Also counts the floating-point work of one training step of each (torch's FlopCounterMode,
    forward + backward) and times this machine's float32 matmul at the same shapes and threads:
    work / matmul throughput is the least time any implementation of the same schedule can take here.

python benchmarks/bench_align.py time --dtype bfloat16 …
    The same in bf16 autocast (align.dtype=bfloat16; fast only where the CPU has AMX/AVX512-BF16).

python benchmarks/bench_align.py floor [--epochs 4] [--repeat 2] [--dtype auto] [--threads N]
    Stream 1 at University-1652 size (701 + 37,854 × 1,280-d, release settings, vec_dim 2560) against
    its floor, in one run: the FLOP of one training step (FlopCounterMode, forward + backward) at the
    throughput of a bare matmul of the dominant shape (37,854 × 1,280 × 2,560, best of 5, timed before
    and after the training, best taken) in the dtype ``align.dtype`` resolves to here (auto: bf16
    on AMX/AVX512-BF16 CPUs). Ratio = median seconds per epoch (the first epoch of each run left
    out: allocator warm-up) / floor seconds per epoch. ``--repeat`` trains that many times.

python benchmarks/bench_align.py profile [--steps 2] [--threads N] [--dtype float32] [--top 15]
    torch.profiler over release-size stream-1 training steps (forward, losses, backward, clipping,
    CAdamW), after one warm-up step: the operations with the most self CPU time, and the share of
    time in matrix products. The state saving and monitoring of the stage are not in it (see
    BENCHMARKS.md for the stage timed end to end).

python benchmarks/bench_align.py verify-release --geoalign /tmp/ref/GeoAlign --workdir /tmp/verify
    Builds a small fake release (random weights, random features), runs GeoAlign's own evaluate.py
    on it (a patched throwaway copy in --workdir: paths, sizes, more printed decimals) and compares
    R@1/R@5/R@10/AP with ours (align.geoalign_release + retrieve.metrics, protocol "geoalign")
    in all four settings D2S/S2D × fusion on/off. GeoAlign needs easydict, tqdm, pyyaml on
    PYTHONPATH (pass --extra-path for a pip --target folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cvgl.align.geoalign import GeoAlignStream1, Stream1Config  # noqa: E402
from cvgl.align.geoalign_release import export_stream1  # noqa: E402
from cvgl.align.isms import ISMS, ISMSConfig, isms_input, train_isms  # noqa: E402
from cvgl.align.train_stream1 import train_stream1  # noqa: E402
from cvgl.align.training import TrainerOptions  # noqa: E402

# --------------------------------------------------------------------------------------------------
# timing


def bench_time(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n_sat, n_dro, dim = 701, 37854, 1280
    sat = F.normalize(torch.randn(n_sat, dim, generator=g), dim=-1)
    dro = F.normalize(torch.randn(n_dro, dim, generator=g), dim=-1)
    cfg = Stream1Config()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda: this torch sees no CUDA device; run on a GPU machine or use --device cpu"
        )

    def now() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    stamps: list[float] = []
    t0 = now()
    train_stream1(
        sat,
        dro,
        cfg.replace(epochs=args.epochs),
        opts=TrainerOptions(device=device, dtype=args.dtype, on_epoch=lambda e, s: stamps.append(now())),
    )
    per_epoch = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    # The first epoch carries allocator warm-up; extrapolate from the rest when there is a rest.
    steady = per_epoch[1:] or per_epoch
    s1_epoch = sum(steady) / len(steady)

    icfg = ISMSConfig()
    x = isms_input(
        [torch.randn(n_sat + n_dro, dim, generator=g), torch.randn(n_sat + n_dro, dim, generator=g)]
    )
    istamps: list[float] = []
    t1 = now()
    train_isms(
        x,
        ISMSConfig(**{**icfg.__dict__, "epochs": args.isms_epochs}),
        opts=TrainerOptions(device=device, dtype=args.dtype, on_epoch=lambda e, s: istamps.append(now())),
    )
    i_epoch = [b - a for a, b in zip([t1] + istamps[:-1], istamps)]
    i_steady = i_epoch[1:] or i_epoch
    isms_epoch = sum(i_steady) / len(i_steady)
    out = {
        "device": device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        "stream1_epochs_timed": args.epochs,
        "stream1_s_per_epoch": per_epoch,
        "stream1_300_epochs_min": s1_epoch * cfg.epochs / 60,
        "isms_epochs_timed": args.isms_epochs,
        "isms_s_per_epoch": i_epoch,
        "isms_full_min": isms_epoch * icfg.epochs / 60,
        "isms_epochs_full": icfg.epochs,
    }
    out["total_min"] = out["stream1_300_epochs_min"] + out["isms_full_min"]
    out.update(work_bound(cfg, icfg, n_sat, n_rows=n_sat + n_dro, device=device))
    return out


def bench_floor(args: argparse.Namespace) -> dict:
    """Seconds per stream-1 epoch at University-1652 size over the bare-matmul floor (module docstring)."""
    import statistics

    from cvgl.align.train_stream1 import stream1_batch_loss
    from cvgl.align.training import compute_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = compute_dtype(args.dtype, "cpu")
    g = torch.Generator().manual_seed(0)
    n_sat, n_dro, dim = 701, 37854, 1280
    sat = F.normalize(torch.randn(n_sat, dim, generator=g), dim=-1)
    dro = F.normalize(torch.randn(n_dro, dim, generator=g), dim=-1)
    cfg = Stream1Config()
    torch.manual_seed(0)
    model = GeoAlignStream1(cfg).train()
    loss_fn = stream1_batch_loss(cfg)
    flop = step_flops(
        lambda: loss_fn(model, None, sat, dro[: n_sat * cfg.dro_num], None, None, 0)[0].backward()
    )
    mm_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32

    def matmul_best(repeat: int = 5) -> tuple[float, float]:
        """Best (wall, CPU) FLOP/s of the dominant-shape matmul."""
        a = torch.randn(n_dro, dim, generator=g).to(mm_dtype)
        b = torch.randn(dim, cfg.vec_dim, generator=g).to(mm_dtype)
        a @ b
        wall = cpu = math.inf
        for _ in range(repeat):
            t, c = time.perf_counter(), time.process_time()
            a @ b
            wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
        work = 2 * n_dro * dim * cfg.vec_dim
        return work / wall, work / cpu

    load_before = os.getloadavg()
    rates = [matmul_best()]
    walls: list[float] = []
    cpus: list[float] = []
    runs = []
    for _ in range(args.repeat):
        stamps: list[tuple[float, float]] = []
        t0 = (time.perf_counter(), time.process_time())
        train_stream1(
            sat, dro, cfg.replace(epochs=args.epochs),
            opts=TrainerOptions(
                dtype=dtype, on_epoch=lambda e, s, st=stamps: st.append((time.perf_counter(), time.process_time()))
            ),
        )
        per = [(b[0] - a[0], b[1] - a[1]) for a, b in zip([t0] + stamps[:-1], stamps)]
        runs.append([round(w, 3) for w, _ in per])
        steady = per[1:] or per
        walls.extend(w for w, _ in steady)
        cpus.extend(c for _, c in steady)
        rates.append(matmul_best())
    rate = max(r[0] for r in rates)
    cpu_rate = max(r[1] for r in rates)
    epoch_s = statistics.median(walls)
    floor_s = flop / rate
    return {
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "gflop_per_epoch": flop / 1e9,
        "matmul_gflops_runs": [round(r[0] / 1e9, 1) for r in rates],
        "matmul_gflops": rate / 1e9,
        "floor_s_per_epoch": floor_s,
        "s_per_epoch_runs": runs,
        "s_per_epoch_median": epoch_s,
        "ratio_to_floor": epoch_s / floor_s,
        # The same in CPU seconds (all threads of this process): far less disturbed by other
        # processes than wall time on a shared machine, provided OpenMP threads wait passively.
        "matmul_gflop_per_cpu_s": cpu_rate / 1e9,
        "cpu_s_per_epoch_median": statistics.median(cpus),
        "cpu_ratio_to_floor": statistics.median(cpus) / (flop / cpu_rate),
    }


def bench_profile(args: argparse.Namespace) -> dict:
    """Top operations of release-size stream-1 steps under torch.profiler (see the module docstring)."""
    from cvgl.align.optim import build_optimizer
    from cvgl.align.train_stream1 import autocast, stream1_batch_loss
    from torch.profiler import ProfilerActivity, profile

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Stream1Config()
    model = GeoAlignStream1(cfg).train()
    sat = F.normalize(torch.randn(701, cfg.out_dim), dim=-1)
    dro = F.normalize(torch.randn(701 * cfg.dro_num, cfg.out_dim), dim=-1)
    params = list(model.parameters())
    opt = build_optimizer(cfg.optim, params, cfg.lr, cfg.weight_decay)
    loss_fn = stream1_batch_loss(cfg)
    labels = torch.arange(701)

    def step() -> None:
        with autocast("cpu", args.dtype):
            loss, _ = loss_fn(model, None, sat, dro, labels, labels[: dro.shape[0]], 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, cfg.clip_grad)
        opt.step()

    step()  # warm-up: allocator, optimizer state
    wall, cpu = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    matmul = sum(e.self_cpu_time_total for e in rows if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    return {
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        "steps": args.steps,
        "wall_s_per_step": wall / args.steps,
        "cpu_s_per_step": cpu / args.steps,
        "matmul_share": matmul / total,
        "top": [
            {"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_step": e.count / args.steps}
            for e in rows[: args.top]
        ],
    }


def step_flops(fn) -> float:
    """Floating-point operations (matmuls, forward + backward) of ``fn()``, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def matmul_gflops(m: int, k: int, n: int, repeat: int = 5, device: str = "cpu") -> float:
    """Best-of-``repeat`` float32 ``[m,k] @ [k,n]`` throughput (GFLOP/s) on ``device`` (CPU: at the
    current thread count; CUDA: with TF32 as torch's default leaves it, i.e. off for matmul)."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    cuda = device.startswith("cuda")
    a @ b
    best = math.inf
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def work_bound(cfg: Stream1Config, icfg: ISMSConfig, n_sat: int, n_rows: int, device: str = "cpu") -> dict:
    """Work of the whole schedule and the least time it can take at this machine's matmul speed."""
    from cvgl.align.isms import isms_loss
    from cvgl.align.train_stream1 import stream1_batch_loss

    torch.manual_seed(0)
    model = GeoAlignStream1(cfg).train().to(device)
    sat = F.normalize(torch.randn(n_sat, cfg.out_dim, device=device), dim=-1)
    dro = F.normalize(torch.randn(n_sat * cfg.dro_num, cfg.out_dim, device=device), dim=-1)
    loss_fn = stream1_batch_loss(cfg)
    s1 = step_flops(lambda: loss_fn(model, None, sat, dro, None, None, 0)[0].backward())
    isms = ISMS(2 * cfg.out_dim, icfg.out_dim).train().to(device)
    xb = torch.randn(icfg.batch_size, 2 * cfg.out_dim, device=device)
    i1 = step_flops(lambda: isms_loss(isms, xb, icfg.w_decor)[0].backward())
    isms_steps = math.ceil(n_rows / icfg.batch_size) * icfg.epochs
    s1_steps = max(1, n_sat // min(cfg.batch_size, n_sat)) * cfg.epochs
    # the dominant matmul shapes: the experts' vec→vec projection and ISMS's 2560→1280 encoder
    peak = max(
        matmul_gflops(n_sat, cfg.vec_dim, cfg.vec_dim, device=device),
        matmul_gflops(icfg.batch_size, 2 * cfg.out_dim, icfg.out_dim, device=device),
    )
    total = s1 * s1_steps + i1 * isms_steps
    return {
        "stream1_gflop_per_step": s1 / 1e9,
        "isms_gflop_per_step": i1 / 1e9,
        "total_tflop": total / 1e12,
        "matmul_gflops": peak,
        "least_min_at_matmul_speed": total / (peak * 1e9) / 60,
    }


# --------------------------------------------------------------------------------------------------
# fake release + GeoAlign cross-check

SMALL = dict(out_dim=64, vec_dim=128, num_experts=4, top_k=2, num_chunks=8, nhead=4)
LAYERS = (26, 28)
BACKBONE = "dinov3_vith16plus"


def write_fake_release(
    root: Path, seed: int = 0, n_build: int = 40, drones_per: int = 6, n_distractor: int = 10
) -> None:
    """Random stream-1/ISMS weights (every tensor perturbed, so no zero-initialized branch hides a bug)
    and random features for D2S and S2D, in GeoAlign's release layout."""
    g = torch.Generator().manual_seed(seed)
    cfg = Stream1Config(**SMALL)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    yml = cfg.to_geoalign_yaml()
    yml["eval"] = {
        "dataset": "Feat_Single",
        "feat": f"feats_test/{BACKBONE}/28",
        "batch_size": 256,
        "remove_junk": True,
    }
    (root / "configs/base_stream1.yml").write_text(yaml.safe_dump(yml, sort_keys=False))
    model = GeoAlignStream1(cfg)
    with torch.no_grad():
        for k, v in model.state_dict().items():  # shared tensors: dec2.* follows dec1.*
            if k.startswith("dec2.") or v.dtype == torch.long:
                continue
            if k.endswith("running_var"):
                v.copy_(0.5 + torch.rand(v.shape, generator=g))
            else:
                v.add_(0.2 * torch.randn(v.shape, generator=g))
    # Written by our exporter, so GeoAlign's strict load_state_dict also checks export_stream1's layout.
    export_stream1(model, cfg, root / "outputs/base_stream1/300_param.t", epoch=300)
    isms = ISMS(2 * SMALL["out_dim"], SMALL["out_dim"])
    isd = {
        k: (
            v
            if v.dtype == torch.long
            else (
                0.5 + torch.rand(v.shape, generator=g)
                if k.endswith("running_var")
                else v + 0.1 * torch.randn(v.shape, generator=g)
            )
        )
        for k, v in isms.state_dict().items()
    }
    (root / "outputs/base_stream2").mkdir(parents=True, exist_ok=True)
    torch.save(isd, root / "outputs/base_stream2/isms_model_26_28.pth")
    d = SMALL["out_dim"]
    for feats_dir in ("feats_test", "feats_test_s2d"):
        # D2S: gallery satellites = buildings + distractors (labels no query has) + two junk (-1).
        # S2D: query satellites = the buildings; gallery drones include a few junk (-1) drones.
        n_sat = n_build + (n_distractor if feats_dir == "feats_test" else 0)
        sat_ids = torch.cat([torch.arange(n_build), 1000 + torch.arange(n_sat - n_build)])
        dro_ids = torch.arange(n_build).repeat_interleave(drones_per)
        if feats_dir == "feats_test":
            sat_ids[-2:] = -1
        else:
            dro_ids[::17] = -1
        base = torch.randn(n_sat, d, generator=g)
        for layer in LAYERS:
            out = root / feats_dir / BACKBONE / str(layer)
            out.mkdir(parents=True, exist_ok=True)
            mix = torch.randn(d, d, generator=g) / math.sqrt(d)
            src = torch.arange(n_build).repeat_interleave(drones_per)
            sat_f = F.normalize(base @ mix + 0.5 * torch.randn(n_sat, d, generator=g), dim=-1)
            dro_f = F.normalize(base[src] @ mix + 1.6 * torch.randn(len(src), d, generator=g), dim=-1)
            for view, f, ids in (("sat", sat_f, sat_ids), ("dro", dro_f, dro_ids)):
                torch.save(f, out / f"{view}_feat")
                torch.save(ids, out / f"{view}_id")
                torch.save([f"{int(i):04d}/{view}_{n}.jpg" for n, i in enumerate(ids)], out / f"{view}_name")


def patch_geoalign(src: Path, dst: Path, release: Path) -> Path:
    """Throwaway copy of GeoAlign with evaluate.py pointed at the fake release and printing 6 decimals."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git"))
    ev = dst / "evaluate.py"
    text = ev.read_text()
    subs = [
        (
            r"DEFAULT_ISMS_PATH = .*",
            f"DEFAULT_ISMS_PATH = {str(release / 'outputs/base_stream2/isms_model_26_28.pth')!r}",
        ),
        (r"FEAT_ROOT_D2S = .*", f"FEAT_ROOT_D2S = {str(release / 'feats_test' / BACKBONE)!r}"),
        (r"FEAT_ROOT_S2D = .*", f"FEAT_ROOT_S2D = {str(release / 'feats_test_s2d' / BACKBONE)!r}"),
        (r"INPUT_DIM_B = .*", f"INPUT_DIM_B = {2 * SMALL['out_dim']}"),
        (r"LATENT_DIM_B = .*", f"LATENT_DIM_B = {SMALL['out_dim']}"),
        (r"MOE_CONFIG_PATH = .*", f"MOE_CONFIG_PATH = {str(release / 'configs/base_stream1.yml')!r}"),
        (r"MOE_WEIGHT_PATH = .*", f"MOE_WEIGHT_PATH = {str(release / 'outputs/base_stream1/300_param.t')!r}"),
        (r"config\['model'\]\['out_dim'\] = 1280", f"config['model']['out_dim'] = {SMALL['out_dim']}"),
        (r"config\['model'\]\['vec_dim'\] = 2560", f"config['model']['vec_dim'] = {SMALL['vec_dim']}"),
        (r":\.2%\}", ":.6%}"),
    ]
    for pat, rep in subs:
        text, n = re.subn(pat, lambda _m, r=rep: r, text)
        if n == 0:
            raise SystemExit(f"could not patch {pat!r} in {ev}: GeoAlign's evaluate.py changed")
    ev.write_text(text)
    return dst


def run_geoalign(repo: Path, mode: str, fusion: bool, extra_path: str | None) -> dict[str, float]:
    cmd = [sys.executable, "evaluate.py", "--mode", mode] + ([] if fusion else ["--no_fusion"])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"GeoAlign evaluate.py failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    out = {}
    for key, label in (("R@1", "top-1"), ("R@5", "top-5"), ("R@10", "top-10"), ("AP", "AP")):
        m = re.search(rf"{re.escape(label)}:\s+([0-9.]+)%", res.stdout)
        if m is None:
            raise SystemExit(f"no {label} in GeoAlign's output:\n{res.stdout[-2000:]}")
        out[key] = float(m.group(1))
    return out


def run_ours(release: Path, mode: str, fusion: bool) -> dict[str, float]:
    from cvgl.align.geoalign_release import release_descriptors
    from cvgl.retrieve.metrics import evaluate

    q, ql, _, gal, gl, _ = release_descriptors(release, mode=mode, model=BACKBONE, fusion=fusion)
    summary, _ = evaluate(q.numpy(), ql.numpy(), gal.numpy(), gl.numpy(), "geoalign", ks=(1, 5, 10))
    return {k: float(summary[k]) for k in ("R@1", "R@5", "R@10", "AP")}


def bench_verify(args: argparse.Namespace) -> dict:
    work = Path(args.workdir)
    release = work / "release"
    if release.exists():
        shutil.rmtree(release)
    write_fake_release(release, seed=args.seed)
    repo = patch_geoalign(Path(args.geoalign), work / "geoalign", release)
    rows = []
    for mode in ("D2S", "S2D"):
        for fusion in (True, False):
            theirs = run_geoalign(repo, mode, fusion, args.extra_path)
            ours = run_ours(release, mode, fusion)
            diff = max(abs(theirs[k] - ours[k]) for k in theirs)
            rows.append(
                {"mode": mode, "fusion": fusion, "geoalign": theirs, "ours": ours, "max_abs_diff": diff}
            )
    return {"settings": SMALL, "rows": rows, "max_abs_diff": max(r["max_abs_diff"] for r in rows)}


def bench_save(args: argparse.Namespace) -> dict:
    """One resumable-state save of release-size stream 1, as the trainer does it: copy the state
    (model, CAdamW moments, RNG, history) and write it with ``torch_save_atomic``. This is the cost the
    stage paid after every epoch before states of 32 MB or more were saved at most once a minute."""
    import tempfile

    from cvgl.align.checkpoints import torch_save_atomic
    from cvgl.align.geoalign import GeoAlignStream1, Stream1Config
    from cvgl.align.optim import build_optimizer
    from cvgl.align.train_stream1 import _clone

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Stream1Config()
    model = GeoAlignStream1(cfg)
    params = list(model.parameters())
    opt = build_optimizer(cfg.optim, params, cfg.lr, cfg.weight_decay)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # the moments exist, as after any epoch
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            state = _clone({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "rng_torch": torch.get_rng_state(), "history": []})
            torch_save_atomic(state, Path(d) / "state.pt")
            rows.append({"cpu_s": round(time.process_time() - c0, 3), "wall_s": round(time.perf_counter() - w0, 3)})
            size = (Path(d) / "state.pt").stat().st_size
    return {"state_mib": round(size / 2**20, 1), "saves": rows, "load_avg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--isms-epochs", type=int, default=2)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train (default cpu)")
    t.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="align.dtype")
    fl = sub.add_parser("floor", help="stream-1 seconds per epoch over the bare-matmul floor")
    fl.add_argument("--epochs", type=int, default=4)
    fl.add_argument("--repeat", type=int, default=2)
    fl.add_argument("--threads", type=int, default=0)
    fl.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    pr = sub.add_parser("profile")
    pr.add_argument("--steps", type=int, default=2)
    pr.add_argument("--threads", type=int, default=0)
    pr.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    pr.add_argument("--top", type=int, default=15)
    sv = sub.add_parser("save", help="time one resumable-state save of release-size stream 1")
    sv.add_argument("--repeat", type=int, default=3)
    sv.add_argument("--threads", type=int, default=0)
    v = sub.add_parser("verify-release")
    v.add_argument("--geoalign", required=True, help="a checkout of JZLhope/GeoAlign (outside this repo)")
    v.add_argument("--workdir", required=True, help="scratch folder (outside this repo)")
    v.add_argument("--extra-path", default=None, help="PYTHONPATH entry with easydict/tqdm for GeoAlign")
    v.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run = {"time": bench_time, "floor": bench_floor, "profile": bench_profile, "save": bench_save, "verify-release": bench_verify}[args.cmd]
    out = run(args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
