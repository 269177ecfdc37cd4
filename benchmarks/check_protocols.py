"""Check protocol ``vigor``, the GPS metrics and the University-1652 extras against the reference scripts.

Nothing of the reference code lives in this repository: each reference is run from a checkout the user
points at, on random data made here, and the largest difference per metric is printed (and written as
JSON with ``--json FILE``). What is compared:

* ``--sample4geo DIR`` (Skyy93/Sample4Geo): ``sample4geo/evaluate/vigor.py``'s ``calculate_scores``,
  called directly on CPU tensors; its R@K / R@1% / hit rate are read from the function's locals at its
  return (it prints them and returns only R@1). Against ``pipeline.evaluate(..., protocol="vigor")``
  (one chunk) and ``retrieve.metrics.evaluate_streaming`` (three chunks, small query blocks).
* ``--denseuav DIR`` (Dmmm1997/DenseUAV): ``evaluateDistance.py`` and ``evaluateMA.py`` run as scripts
  (``runpy``) in a temporary DenseUAV-like tree (``Dense_GPS_ALL.txt``, ``test/query_drone``,
  ``test/gallery_satellite``, ``pytorch_result_1.mat``); their ``SDM_dict`` / ``MA_dict`` and per-query
  ``evaluate_MA`` distances against ``retrieve.geo`` (positions read by ``positions_for`` from the same
  GPS file, top lists from ``retrieve.metrics.evaluate``).
* ``--u1652 DIR`` (layumi/University1652-Baseline): ``test_160k.py``'s ``get_result_rank10`` and the
  statements of its main block that write ``answer.txt``, executed on CPU tensors, against
  ``retrieve.submission.write_answer``; ``test.py``'s location-averaging block (live in v2.0, later
  left in the file as a string; either form is found) against ``retrieve.submission.multi_query``, and
  ``evaluate_gpu.py`` run on the merged queries against ``pipeline.evaluate(..., protocol="u1652")``.

The scripts are run as they are; only the environment is adapted, never their text: ``Tensor.cuda`` is
the identity (no GPU needed), ``torchvision.datasets.ImageFolder`` is a stand-in that lists files in
torchvision's order (torchvision is not a dependency here), ``matplotlib`` is an empty module, and
NumPy 2 gets back ``np.bool8`` / ``np.in1d`` (removed aliases these scripts use) for the duration.

Usage: ``python benchmarks/check_protocols.py --sample4geo DIR --denseuav DIR --u1652 DIR``
(any subset; ``--seed N``). The results of one run are in ``benchmarks/README_protocols.md``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import os
import runpy
import sys
import tempfile
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvgl import pipeline  # noqa: E402
from cvgl.retrieve import geo, submission  # noqa: E402
from cvgl.retrieve.metrics import evaluate as metrics_evaluate  # noqa: E402
from cvgl.retrieve.metrics import evaluate_streaming, iter_array_chunks  # noqa: E402

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------------
# Environment adapters (the reference scripts are executed unchanged)


class _ImageFolder:
    """torchvision's ``ImageFolder`` file listing (classes = sorted sub-folders; files by sorted walk)."""

    def __init__(self, root: str, transform: Any = None) -> None:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.imgs: list[tuple[str, int]] = []
        for c in classes:
            for dirpath, _, fnames in sorted(os.walk(os.path.join(root, c), followlinks=True)):
                for fname in sorted(fnames):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        self.imgs.append((os.path.join(dirpath, fname), self.class_to_idx[c]))
        self.samples = self.imgs


@contextlib.contextmanager
def reference_environment(cwd: Path) -> Iterator[None]:
    """CPU tensors for ``.cuda()``, stand-ins for torchvision / matplotlib, NumPy 1 aliases, ``cwd``."""
    saved_modules = {k: sys.modules.get(k) for k in ("torchvision", "matplotlib", "matplotlib.pyplot")}
    tv = types.ModuleType("torchvision")
    tv.datasets = types.SimpleNamespace(ImageFolder=_ImageFolder)  # type: ignore[attr-defined]
    mpl = types.ModuleType("matplotlib")
    plt = types.ModuleType("matplotlib.pyplot")
    mpl.pyplot = plt  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": tv, "matplotlib": mpl, "matplotlib.pyplot": plt})
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    added = []
    if not hasattr(np, "bool8"):
        np.bool8 = np.bool_  # type: ignore[attr-defined]
        added.append("bool8")
    if not hasattr(np, "in1d"):
        np.in1d = lambda a, b, assume_unique=False, invert=False: np.isin(  # type: ignore[attr-defined]
            np.ravel(a), b, assume_unique=assume_unique, invert=invert
        )
        added.append("in1d")
    old_cwd, old_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        torch.Tensor.cuda = cuda  # type: ignore[method-assign]
        for name in added:
            delattr(np, name)
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def run_script(path: Path, argv: list[str], cwd: Path) -> dict[str, Any]:
    """Run a reference script as ``__main__`` in ``cwd``; its globals after the run (stdout swallowed)."""
    quiet = contextlib.redirect_stderr(io.StringIO())  # their tqdm bars
    with reference_environment(cwd), contextlib.redirect_stdout(io.StringIO()), quiet:
        sys.argv = [str(path), *argv]
        return runpy.run_path(str(path), run_name="__main__")


def locals_at_return(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call ``fn`` and return its local variables as they are when it returns."""
    seen: dict[str, Any] = {}

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is fn.__code__:
            seen.update(frame.f_locals)

    sys.setprofile(hook)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return seen


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _signs(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Unit rows of +-1/sqrt(d) with d a power of 4: every score is an exact multiple of 1/d (many ties)."""
    return (rng.choice([-1.0, 1.0], size=(n, d)) / np.sqrt(d)).astype(np.float32)


def _flip(rng: np.random.Generator, rows: np.ndarray, max_flips: int) -> np.ndarray:
    out = rows.copy()
    for r in out:
        idx = rng.choice(r.shape[0], size=int(rng.integers(1, max_flips + 1)), replace=False)
        r[idx] *= -1
    return out


def _max_diff(a: dict[str, float], b: dict[str, float], keys: list[str]) -> dict[str, float]:
    return {k: abs(float(a[k]) - float(b[k])) for k in keys}


# --------------------------------------------------------------------------------------------------------
# Sample4Geo: protocol vigor


def load_sample4geo_vigor(root: Path) -> Any:
    """``sample4geo/evaluate/vigor.py`` as a module; its unused ``..trainer`` import gets an empty stand-in."""
    path = root / "sample4geo" / "evaluate" / "vigor.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found; --sample4geo takes a Sample4Geo checkout")
    for name in ("sample4geo", "sample4geo.evaluate"):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = []  # type: ignore[attr-defined]
            sys.modules[name] = pkg
    trainer = types.ModuleType("sample4geo.trainer")
    trainer.predict = None  # type: ignore[attr-defined]
    sys.modules["sample4geo.trainer"] = trainer
    spec = importlib.util.spec_from_file_location("sample4geo.evaluate.vigor", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _vigor_data(rng: np.random.Generator, ties: bool) -> dict[str, Any]:
    """2,000 ground queries; 1,400 satellites that are positives / semi-positives plus 60 distractors
    (G = 1,460: G // 100 = 14 but round(0.01 G) = 15); each query: a positive and 3 distinct semi-positives."""
    n_sat, n_dis, n_q = 1400, 60, 2000
    g_all = n_sat + n_dis
    if ties:
        d = 16
        sat = _signs(rng, g_all, d)
        # Neighbouring satellites alike, so that semi-positives often outscore the positive.
        for i in range(n_sat):
            if rng.random() < 0.5:
                sat[(i + 1) % n_sat] = _flip(rng, sat[i : i + 1], 3)[0]
        pos = rng.integers(0, n_sat, size=n_q)
        q = _flip(rng, sat[pos], 6)
    else:
        d = 64
        sat = _unit(rng.standard_normal((g_all, d)))
        for i in range(n_sat):
            if rng.random() < 0.5:
                sat[(i + 1) % n_sat] = _unit(sat[i : i + 1] + 0.2 * rng.standard_normal((1, d)))[0]
        pos = rng.integers(0, n_sat, size=n_q)
        q = _unit(sat[pos] + 0.3 * rng.standard_normal((n_q, d)).astype(np.float32))
    semi = np.empty((n_q, 3), np.int64)
    for i, p in enumerate(pos):
        semi[i] = (p + rng.choice(np.arange(1, 8), size=3, replace=False)) % n_sat
    perm = rng.permutation(g_all)  # gallery rows in a random order; ids are row-independent
    ids = np.arange(g_all)[perm]
    return {"q": q, "pos": pos, "semi": semi, "g": sat[perm], "ids": ids, "n_sat": n_sat}


def check_vigor(root: Path, seed: int) -> dict[str, Any]:
    """Sample4Geo's ``calculate_scores`` against protocol ``vigor``, with and without ties and junk."""
    mod = load_sample4geo_vigor(root)
    out: dict[str, Any] = {}
    for ties in (True, False):
        rng = np.random.default_rng(seed + int(ties))
        dd = _vigor_data(rng, ties)
        q, g, ids, pos, semi, n_sat = dd["q"], dd["g"], dd["ids"], dd["pos"], dd["semi"], dd["n_sat"]
        ref_labels = np.concatenate([pos[:, None], semi], 1)
        seen = locals_at_return(
            mod.calculate_scores,
            torch.from_numpy(q),
            torch.from_numpy(g),
            torch.from_numpy(ref_labels),
            torch.from_numpy(ids),
            step_size=700,
            ranks=[1, 5, 10],
        )
        res, topk = seen["results"], seen["topk"]
        ref = {f"R@{k}": float(res[j]) for j, k in enumerate(topk[:-1])}
        ref["R@1%"], ref["hit_rate"] = float(res[-1]), float(seen["hit_rate"])
        # Distractors: labels no query asks for (-2 here; the reference just gets unused ids).
        ours_labels = np.where(ids < n_sat, ids, -2)
        keys = ["R@1", "R@5", "R@10", "R@1%", "hit_rate"]
        one = pipeline.evaluate(q, pos, g, ours_labels, protocol="vigor", semi_positives=semi)
        streamed, _ = evaluate_streaming(
            q, pos, iter_array_chunks(g, ours_labels, 500), "vigor", block_size=333, semi_positives=semi
        )
        # Junk rows (label -1) are removed from the ranking: with 30 junk rows added (G = 1,490,
        # G // 100 still 14) the numbers must equal the reference's on the gallery without them.
        junk = _unit(rng.standard_normal((30, g.shape[1])).astype(np.float32))
        junked = pipeline.evaluate(
            q,
            pos,
            np.concatenate([junk, g]),
            np.concatenate([np.full(30, -1), ours_labels]),
            protocol="vigor",
            semi_positives=semi,
        )
        # What R@1% would be with round(0.01 G) (University-1652's rule) instead of Sample4Geo's G // 100.
        _, per_query = metrics_evaluate(q, pos, g, ours_labels, "vigor", semi_positives=semi)
        first = per_query.first_rank
        if_round = 100.0 * float(np.mean((first >= 0) & (first < round(0.01 * g.shape[0]))))
        name = "ties" if ties else "float"
        out[name] = {
            "data": f"{q.shape[0]} queries x {g.shape[0]} satellites (d={g.shape[1]}), 60 distractors",
            "reference": ref,
            "ours_one_chunk": {k: one[k] for k in keys},
            "max_abs_diff_one_chunk": _max_diff(ref, one, keys),
            "max_abs_diff_streamed": _max_diff(ref, streamed, keys),
            "max_abs_diff_with_30_junk": _max_diff(ref, junked, keys),
            "R@1%_threshold": {
                "reference": int(topk[-1]),
                "floor_G/100": g.shape[0] // 100,
                "round_0.01G": round(0.01 * g.shape[0]),
                "R@1%_with_round": if_round,
            },
        }
    return out


# --------------------------------------------------------------------------------------------------------
# DenseUAV: SDM@K, MA@m, metres


def _denseuav_tree(root: Path, rng: np.random.Generator, float32_coords: bool) -> dict[str, Any]:
    """A DenseUAV-like test tree: 120 query locations x 3 drone images, 180 gallery locations (1-2
    satellite images; 60 of them distractors no query has), 12 junk images (label -1), GPS file."""
    n_loc, n_q_loc = 180, 120
    lon0, lat0 = 120.35, 30.32
    # Locations ~30-600 m apart, as in DenseUAV's dense sampling.
    pos = np.stack([lon0 + rng.uniform(0, 0.006, n_loc), lat0 + rng.uniform(0, 0.006, n_loc)], 1)
    lines = []
    q_names, g_names = [], []
    for i in range(n_loc):
        loc = f"{i + 1:06d}"
        if i < n_q_loc:
            for h in ("H100.JPG", "H80.JPG", "H90.JPG"):
                q_names.append(f"test/query_drone/{loc}/{h}")
        for h in ("H100.tif", "H80.tif")[: 1 + int(rng.integers(0, 2))]:
            g_names.append(f"test/gallery_satellite/{loc}/{h}")
    junk_loc = "999999"
    g_names += [f"test/gallery_satellite/{junk_loc}/J{j:02d}.tif" for j in range(12)]
    seen: dict[str, int] = {}
    for name in q_names + g_names:
        loc = name.split("/")[-2]
        i = int(loc) - 1 if loc != junk_loc else 0
        # Each image of a location a little off (~0.1 m per line): the last line of a folder must win.
        seen[loc] = seen.get(loc, -1) + 1
        lon, lat = pos[i] + 1e-6 * seen[loc]
        if float32_coords:
            lon, lat = np.float32(lon), np.float32(lat)
        fmt = repr if float32_coords else (lambda v: f"{v:.9f}")
        lines.append(f"{name} E{fmt(float(lon))} N{fmt(float(lat))} 80.0")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    (root / "Dense_GPS_ALL.txt").write_text("\n".join(lines) + "\n")
    # Rows in ImageFolder's order (sorted folders, sorted files), as the reference reads them.
    q_names = sorted(q_names)
    g_names = sorted(g_names)
    return {"q_names": q_names, "g_names": g_names, "n_loc": n_loc}


def _geo_diff(ours: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    """Largest absolute difference over SDM@K and over MA@m, and those of the distance statistics."""
    diff = {k: abs(ours[k] - ref[k]) for k in ref}
    return {
        "SDM@K (K=1..100)": max(v for k, v in diff.items() if k.startswith("SDM")),
        "MA@m (m=1..100)": max(v for k, v in diff.items() if k.startswith("MA")),
        "dist_m_mean": diff["dist_m_mean"],
        "dist_m_median": diff["dist_m_median"],
    }


def check_denseuav(root: Path, seed: int) -> dict[str, Any]:
    """DenseUAV's ``evaluateDistance.py`` / ``evaluateMA.py`` against ``retrieve.geo``."""
    for f in ("evaluateDistance.py", "evaluateMA.py"):
        if not (root / f).is_file():
            raise SystemExit(f"{root / f} not found; --denseuav takes a DenseUAV checkout")
    out: dict[str, Any] = {}
    ks, metres = list(range(1, 101)), list(range(1, 101))
    for name, ties, f32 in (("ties", True, False), ("float", False, False), ("float32_coords", False, True)):
        rng = np.random.default_rng(seed + 10 + len(name))
        with tempfile.TemporaryDirectory(prefix="denseuav-") as tmp:
            data_root = Path(tmp) / "data"
            tree = _denseuav_tree(data_root, rng, f32)
            qn, gn = tree["q_names"], tree["g_names"]
            q_lab = np.array([int(n.split("/")[-2]) for n in qn])
            g_lab = np.array([int(n.split("/")[-2]) if "/999999/" not in n else -1 for n in gn])
            d = 16 if ties else 64
            if ties:
                base = _signs(rng, tree["n_loc"], d)
                g = _flip(rng, base[g_lab.clip(1) - 1], 3)
                q = _flip(rng, base[q_lab - 1], 5)
            else:
                base = _unit(rng.standard_normal((tree["n_loc"], d)))
                g = _unit(base[g_lab.clip(1) - 1] + 0.3 * rng.standard_normal((len(gn), d)))
                q = _unit(base[q_lab - 1] + 0.8 * rng.standard_normal((len(qn), d)))
            work = Path(tmp) / "work"
            work.mkdir()
            scipy.io.savemat(
                work / "pytorch_result_1.mat",
                {"query_f": q, "query_label": q_lab, "gallery_f": g, "gallery_label": g_lab},
            )
            ref = run_script(root / "evaluateDistance.py", ["--root_dir", str(data_root) + "/"], work)
            ref_ma_only = run_script(root / "evaluateMA.py", ["--root_dir", str(data_root) + "/"], work)
            ref_top = np.stack([np.asarray(t[:100]) for t in ref["indexOfTopK_list"]])
            with reference_environment(work):
                ref_dist = np.array([ref["evaluate_MA"](int(ref_top[i, 0]), i) for i in range(len(qn))])

            gps = str(data_root / "Dense_GPS_ALL.txt")
            q_pos = geo.positions_for(qn, gps=gps, root=None, what="query")
            g_pos = geo.positions_for(gn, gps=gps, root=None, what="gallery")
            _, res = metrics_evaluate(q, q_lab, g, g_lab, "u1652", topk=100)

            ref_m = {f"SDM@{k}": 100.0 * float(ref["SDM_dict"][k]) for k in ks}
            ref_m.update({f"MA@{m}m": 100.0 * float(ref["MA_dict"][m]) for m in metres})
            ref_m["dist_m_mean"], ref_m["dist_m_median"] = float(ref_dist.mean()), float(np.median(ref_dist))
            # (1) the metric definitions: our functions on the reference's own top lists;
            same_lists = geo.geo_metrics(q_pos, g_pos, ref_top, ks, scale=5000.0, ma_metres=metres)
            # (2) end to end: our top lists (tie order may differ from argsort's).
            own_lists = geo.geo_metrics(q_pos, g_pos, res.topk, ks, scale=5000.0, ma_metres=metres)
            ours_dist = geo.haversine_m(
                q_pos[:, 1], q_pos[:, 0], g_pos[ref_top[:, 0], 1], g_pos[ref_top[:, 0], 0]
            )
            s = q @ g.T
            ref_sc = np.take_along_axis(s, ref_top, 1)
            own_sc = np.take_along_axis(s, res.topk, 1)

            out[name] = {
                "data": f"{len(qn)} queries x {len(gn)} gallery (12 junk, 60 distractor locations), d={d}",
                "reference_SDM@1,5,10": [ref_m["SDM@1"], ref_m["SDM@5"], ref_m["SDM@10"]],
                "max_abs_diff_same_top_lists": _geo_diff(same_lists, ref_m),
                "max_abs_diff_own_top_lists": _geo_diff(own_lists, ref_m),
                "top_lists_identical": int(np.all(ref_top == res.topk, axis=1).sum()),
                "top_lists_equal_scores_positionwise": int(np.all(ref_sc == own_sc, axis=1).sum()),
                "n_queries": len(qn),
                "max_abs_diff_top1_metres": float(np.abs(ours_dist - ref_dist).max()),
                "evaluateMA_vs_evaluateDistance_MA": max(
                    abs(ref_ma_only["MA_dict"][m] - ref["MA_dict"][m]) for m in metres
                ),
            }
    return out


# --------------------------------------------------------------------------------------------------------
# University-1652: answer.txt and multi-query


def _main_block(tree: ast.Module) -> list[ast.stmt]:
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return node.body
    raise SystemExit("test_160k.py has no __main__ block")


def _answer_reference(u1652: Path, q: np.ndarray, g: np.ndarray, g_files: list[str], work: Path) -> str:
    """Run ``get_result_rank10`` and the answer-writing statements of ``test_160k.py``'s main block."""
    src = (u1652 / "test_160k.py").read_text()
    tree = ast.parse(src)
    fns = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name in ("get_result_rank10", "get_SatId_160k")
    ]
    body = _main_block(tree)
    start = next(i for i, s in enumerate(body) if "query_feature.cuda()" in ast.unparse(s))
    ns: dict[str, Any] = {"np": np, "torch": torch, "os": os}
    with reference_environment(work), contextlib.redirect_stdout(io.StringIO()):
        exec(compile(ast.Module(body=fns, type_ignores=[]), str(u1652 / "test_160k.py"), "exec"), ns)  # noqa: S102
        # CustomData160k_sat (image_folder.py, not in the repository): (path, os.path.splitext(fname)[0]).
        imgs = [(f"gallery_satellite_160k/{f}", os.path.splitext(f)[0]) for f in g_files]
        gallery_label, _ = ns["get_SatId_160k"](imgs)
        ns.update(
            query_feature=torch.from_numpy(q),
            gallery_feature=torch.from_numpy(g),
            gallery_label=gallery_label,
        )
        exec(compile(ast.Module(body=body[start:], type_ignores=[]), str(u1652 / "test_160k.py"), "exec"), ns)  # noqa: S102
        return (work / "answer.txt").read_text()


def _multi_block(u1652: Path, alt: Path | None) -> ast.If:
    """The ``if which_query == N:`` block of ``test.py`` that averages query views (live code in v2.0,
    a string in later versions: both are searched)."""
    for path in [p for p in (alt, u1652 / "test.py") if p is not None]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            cands: list[ast.AST] = [node]
            if (
                isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                try:
                    cands = list(ast.walk(ast.parse(textwrap.dedent(node.value.value))))
                except SyntaxError:
                    continue
            for c in cands:
                if (
                    isinstance(c, ast.If)
                    and "which_query" in ast.unparse(c.test)
                    and "new_query_feature" in ast.unparse(c)
                ):
                    return c
    raise SystemExit("no query-averaging block (new_query_feature) found in test.py")


def check_u1652(root: Path, seed: int, v20_test: Path | None) -> dict[str, Any]:
    """``test_160k.py``'s answer.txt and ``test.py``'s multi-query (+ ``evaluate_gpu.py``) against ours."""
    out: dict[str, Any] = {}
    # ---- answer.txt
    for name, ties in (("answer_float", False), ("answer_ties", True)):
        rng = np.random.default_rng(seed + 20 + int(ties))
        n_q, n_g = 80, 600
        d = 16 if ties else 64
        g = _signs(rng, n_g, d) if ties else _unit(rng.standard_normal((n_g, d)))
        q = _flip(rng, g[rng.integers(0, n_g, n_q)], 5) if ties else _unit(rng.standard_normal((n_q, d)))
        exts = [".jpg", ".png", ".webp", ".jpeg"]
        g_files = sorted(f"{rng.integers(0, 10**8):08d}.v{i % 3}{exts[i % 4]}" for i in range(n_g))
        q_files = [f"{rng.integers(0, 16**8):08x}.jpeg" for _ in range(n_q)]
        with tempfile.TemporaryDirectory(prefix="u160k-") as tmp:
            work = Path(tmp)
            # The reference extracts queries in query_drone_name.txt's order (rows of q); ours holds
            # them in name order and maps the file's lines to rows.
            (work / "query_drone_name.txt").write_text("\n".join(q_files) + "\n")
            ref_text = _answer_reference(root, q, g, g_files, work)
            order = np.argsort(q_files)
            q_names = [f"query_drone_160k/{q_files[i]}" for i in order]
            g_perm = rng.permutation(n_g)  # our gallery rows in another order: ids come from names
            g_names = [f"gallery_satellite_160k/{g_files[i]}" for i in g_perm]
            _, res = metrics_evaluate(q[order], np.full(n_q, -2), g[g_perm], np.arange(n_g), "u1652", topk=10)
            rows = submission.answer_rows(work / "query_drone_name.txt", q_names)
            ours_path = submission.write_answer(work / "ours" / "answer.txt", rows, res.topk, g_names)
            ours_text = ours_path.read_text()
        id_row = {os.path.splitext(f)[0]: i for i, f in enumerate(g_files)}
        s = q @ g.T
        ref_lines, our_lines = ref_text.splitlines(), ours_text.splitlines()
        same_scores = sum(
            all(
                s[i, id_row[a]] == s[i, id_row[b]]
                for a, b in zip(rl.split("\t"), ol.split("\t"), strict=True)
            )
            for i, (rl, ol) in enumerate(zip(ref_lines, our_lines, strict=True))
        )
        out[name] = {
            "data": f"{n_q} queries x {n_g} satellites, d={d}",
            "byte_identical": ref_text == ours_text,
            "lines_identical": sum(a == b for a, b in zip(ref_lines, our_lines, strict=True)),
            "lines_equal_scores_positionwise": same_scores,
            "n_lines": len(ref_lines),
        }
    # ---- multi-query
    block = _multi_block(root, v20_test)
    rng = np.random.default_rng(seed + 30)
    n_loc, n_dis, d = 150, 60, 512  # the reference block allocates 512-dim features
    views = rng.integers(2, 9, n_loc)
    q_lab = np.repeat(np.arange(1, n_loc + 1), views)
    base = rng.standard_normal((n_loc + n_dis, d)).astype(np.float32)
    raw_q = (base[q_lab - 1] + 12.0 * rng.standard_normal((len(q_lab), d))).astype(np.float32) * rng.uniform(
        0.5, 3, (len(q_lab), 1)
    ).astype(np.float32)
    perm = rng.permutation(len(q_lab))  # views of a location are not contiguous
    raw_q, q_lab = raw_q[perm], q_lab[perm]
    g_lab = np.concatenate([np.arange(1, n_loc + n_dis + 1), np.full(5, -1)])
    g = _unit(
        np.concatenate([base + 1.0 * rng.standard_normal(base.shape), rng.standard_normal((5, d))]).astype(
            np.float32
        )
    )
    # extract_feature L2-normalises every image's feature before the block runs.
    qf = torch.from_numpy(raw_q)
    qf = qf.div(torch.norm(qf, p=2, dim=1, keepdim=True))
    ns: dict[str, Any] = {
        "np": np,
        "torch": torch,
        "query_feature": qf,
        "query_label": [int(x) for x in q_lab],
    }
    exec(compile(ast.Module(body=block.body, type_ignores=[]), "test.py", "exec"), ns)  # noqa: S102
    ref_q, ref_lab = ns["query_feature"].numpy(), np.asarray(ns["query_label"])
    names = [f"query_drone/{int(lab):04d}/image-{i:02d}.jpeg" for i, lab in enumerate(q_lab)]
    our_q, our_lab, our_names = submission.multi_query(raw_q, q_lab, names)
    with tempfile.TemporaryDirectory(prefix="u1652-") as tmp:
        work = Path(tmp)
        scipy.io.savemat(
            work / "pytorch_result.mat",
            {"gallery_f": g, "gallery_label": g_lab, "query_f": ref_q, "query_label": ref_lab},
        )
        ev = run_script(root / "evaluate_gpu.py", [], work)
    cmc, n_ql = ev["CMC"], len(ev["query_label"])
    ref_m = {
        "R@1": float(cmc[0]) * 100,
        "R@5": float(cmc[4]) * 100,
        "R@10": float(cmc[9]) * 100,
        "R@1%": float(cmc[round(len(g_lab) * 0.01)]) * 100,
        "AP": float(ev["ap"]) / n_ql * 100,
    }
    ours_m = pipeline.evaluate(our_q, our_lab, g, g_lab, protocol="u1652")
    out["multi_query"] = {
        "data": f"{len(q_lab)} drone views of {n_loc} locations (2-8 each, shuffled) -> {len(our_lab)} queries; "
        f"gallery {len(g_lab)} ({n_dis} distractors, 5 junk), d={d}",
        "labels_equal": bool(np.array_equal(ref_lab, our_lab)),
        "max_abs_diff_descriptor": float(np.abs(ref_q - our_q).max()),
        "names_sample": our_names[:2],
        "reference_metrics": ref_m,
        "max_abs_diff_metrics_vs_evaluate_gpu": _max_diff(ref_m, ours_m, list(ref_m)),
    }
    return out


def main() -> None:
    """Parse the reference checkouts, run every check that has one, print (and save) the differences."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sample4geo", type=Path, help="a Skyy93/Sample4Geo checkout")
    ap.add_argument("--denseuav", type=Path, help="a Dmmm1997/DenseUAV checkout")
    ap.add_argument("--u1652", type=Path, help="a layumi/University1652-Baseline checkout")
    ap.add_argument(
        "--u1652-v20-test", type=Path, help="test.py of University1652-Baseline v2.0 (9855388), optional"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not (args.sample4geo or args.denseuav or args.u1652):
        ap.error("give at least one of --sample4geo, --denseuav, --u1652")
    report: dict[str, Any] = {"numpy": np.__version__, "torch": torch.__version__, "seed": args.seed}
    if args.sample4geo:
        report["vigor"] = check_vigor(args.sample4geo.resolve(), args.seed)
    if args.denseuav:
        report["denseuav"] = check_denseuav(args.denseuav.resolve(), args.seed)
    if args.u1652:
        v20 = args.u1652_v20_test.resolve() if args.u1652_v20_test else None
        report["u1652"] = check_u1652(args.u1652.resolve(), args.seed, v20)
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
