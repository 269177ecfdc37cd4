"""The `pipeline` command line: parse, load the config, call a stage. Nothing else lives here."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from configs.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Feature cache and retrieval pipeline for cross-view geo-localization.\n\n"
    "extract (backbone → cache) · align (cached descriptors → aligned descriptors) · retrieve (exact R@K / AP).",
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and maintain the feature cache.")
app.add_typer(cache_app, name="cache")

out = Console(soft_wrap=True)
err = Console(stderr=True)


class _State:
    cache_dir: str | None = None
    quiet: bool = False
    debug: bool = False


STATE = _State()

CONFIG_ARGS = typer.Argument(
    None, help="[CONFIG] then section.field=value overrides (CONFIG: a YAML file or a shipped name)."
)


@app.callback()
def _options(
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", help="Cache root (default: $PIPELINE_CACHE_DIR, else ~/.cache/cvgl-pipeline)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (for scripts)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    STATE.cache_dir, STATE.quiet, STATE.debug = cache_dir, quiet, debug


# -- progress -------------------------------------------------------------------------------------
class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:  # type: ignore[override]
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} it/s" if speed else "– it/s", style="progress.data.speed")


class Reporter:
    """Rich progress bars with items/s and ETA; silent with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> Reporter:
        if not self.quiet:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=err,
                transient=False,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, desc: str, done: int, total: int, info: dict | None = None) -> None:
        if self.progress is None:
            return
        if desc not in self.tasks:
            self.tasks[desc] = self.progress.add_task(desc, total=total or None, info="")
        text = "  ".join(f"{k}={v:.4g}" for k, v in (info or {}).items() if isinstance(v, (int, float)))
        self.progress.update(self.tasks[desc], completed=done, total=total or None, info=text)

    def log(self, desc: str, epoch: int, epochs: int, losses: dict) -> None:
        self(desc, epoch, epochs, losses)


def say(msg: str) -> None:
    if not STATE.quiet:
        err.print(msg)


# -- stage helpers --------------------------------------------------------------------------------
def _split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load(args: list[str] | None, default: str | None = None):
    from configs.schema import load_config

    path, overrides = _split_args(args)
    return load_config(path or default, overrides)


def _store():
    from cache.store import CacheStore

    return CacheStore.open_default(STATE.cache_dir)


def _stage_extract(cfg, store, reporter) -> list:
    from extract.runner import run_extraction

    return run_extraction(cfg, store, progress=reporter)


def _report_extract(entries) -> None:
    for e in entries:
        say(f"{'reused  ' if e.reused else 'computed'} {e.alias}  ({e.count} rows, key {e.key[:12]})")


def _run_stage(stage: str, cfg, fn):
    from configs.run import RunFolder

    store = _store()
    run = RunFolder(cfg, stage, cache_root=store.root)
    try:
        with Reporter(STATE.quiet) as reporter:
            result = fn(cfg, store, run, reporter)
    except BaseException as e:
        run.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    run.finish()
    if not run.scratch:
        say(f"run folder: {run.path}")
    return result


SKIP_BAD = typer.Option(
    False, "--skip-bad", help="Leave out unreadable images (listed in the manifest) instead of stopping."
)
LAUNCHER = typer.Option(None, "--launcher", help="torchrun: spread the extraction over --nproc processes.")
NPROC = typer.Option(
    None, "--nproc", help="Processes for --launcher torchrun (default: one per GPU, 1 on CPU)."
)


def _extract_flags(
    args: list[str] | None, skip_bad: bool, launcher: str | None, nproc: int | None
) -> list[str]:
    extra = ["extract.skip_bad=true"] if skip_bad else []
    extra += [f"extract.launcher={launcher}"] if launcher else []
    extra += [f"extract.nproc={nproc}"] if nproc is not None else []
    return list(args or []) + extra


@app.command(context_settings={"allow_extra_args": True})
def extract(
    args: list[str] | None = CONFIG_ARGS,
    skip_bad: bool = SKIP_BAD,
    launcher: str | None = LAUNCHER,
    nproc: int | None = NPROC,
) -> None:
    """Run the frozen backbone over a dataset and cache per-layer descriptors (skips cached entries)."""
    cfg = _load(_extract_flags(args, skip_bad, launcher, nproc))

    def go(cfg, store, run, reporter):
        entries = _stage_extract(cfg, store, reporter)
        run.record_keys({e.alias: e.key for e in entries})
        return entries

    _report_extract(_run_stage("extract", cfg, go))


@app.command()
def align(args: list[str] | None = CONFIG_ARGS) -> None:
    """Train an alignment method on cached descriptors and cache the aligned descriptors.

    Inputs: align.query / align.gallery (lists of entry aliases, one per layer), by default the
    extraction's entries <name>.<view>@<layer>. Outputs: <align.alias or name.method>.<view>.
    """
    cfg = _load(args)

    def go(cfg, store, run, reporter):
        from align.runner import run_alignment

        return run_alignment(cfg, store, run, log=reporter.log)

    for e in _run_stage("align", cfg, go):
        say(f"{'reused  ' if e.reused else 'computed'} {e.alias}  ({e.count} rows, key {e.key[:12]})")


def _print_metrics(rows: list[tuple[str, dict]]) -> None:
    table = Table(title="retrieval")
    keys = ["R@1", "R@5", "R@10", "R@1%", "AP"]
    table.add_column("descriptors")
    table.add_column("protocol")
    for k in keys:
        table.add_column(k, justify="right")
    for label, m in rows:
        table.add_row(label, m["protocol"], *[f"{m[k]:.2f}" if k in m else "–" for k in keys])
    out.print(table)


@app.command()
def retrieve(args: list[str] | None = CONFIG_ARGS) -> None:
    """Exact retrieval metrics: query=ALIAS gallery=ALIAS protocol=u1652|geoalign|cvft out=DIR."""
    cfg = _load(args)

    def go(cfg, store, run, reporter):
        from retrieve.runner import run_retrieval

        if cfg.dataset.layout == "geoalign_release":
            from align.runner import run_release

            q, g = run_release(cfg, store, run)
            return run_retrieval(
                cfg, store, run, query=cfg.retrieve.query or q, gallery=cfg.retrieve.gallery or g
            )
        return run_retrieval(cfg, store, run)

    m = _run_stage("retrieve", cfg, go)
    _print_metrics([(f"{m['query']} → {m['gallery']}", m)])


@app.command()
def run(
    args: list[str] | None = CONFIG_ARGS,
    skip_bad: bool = SKIP_BAD,
    launcher: str | None = LAUNCHER,
    nproc: int | None = NPROC,
) -> None:
    """extract → align → retrieve; each stage reuses what the cache already holds."""
    cfg = _load(_extract_flags(args, skip_bad, launcher, nproc))

    def go(cfg, store, run, reporter):
        from align.runner import run_alignment
        from retrieve.runner import run_retrieval

        entries = _stage_extract(cfg, store, reporter)
        run.record_keys({e.alias: e.key for e in entries})
        _report_extract(entries)
        aligned = run_alignment(cfg, store, run, log=reporter.log)
        for e in aligned:
            say(f"{'reused  ' if e.reused else 'computed'} {e.alias}")
        return run_retrieval(cfg, store, run)

    m = _run_stage("run", cfg, go)
    _print_metrics([(f"{m['query']} → {m['gallery']}", m)])


DEMO_NOTE = (
    "The backbone in this demo is a small, randomly initialised DINOv3 (no weights can be downloaded), "
    "run on a synthetic dataset the tool generates: these numbers show that the pipeline works end to end, "
    "not what a trained model reaches."
)


@app.command()
def demo(
    args: list[str] | None = typer.Argument(
        None,
        help="[geoalign|cvft] then section.field=value overrides of configs/demo.yaml or configs/demo_cvft.yaml.",
    ),
) -> None:
    """A synthetic end-to-end run on CPU. `demo` (default): drone→satellite with a small random DINOv3 and
    ISMS. `demo cvft`: ground→aerial with a random VGG16 and CVFT against its baselines."""
    args = list(args or [])
    which = args.pop(0) if args and "=" not in args[0] else "geoalign"
    if which == "cvft":
        return _demo_cvft(args)
    if which != "geoalign":
        raise UserError(f"unknown demo {which!r}; use `pipeline demo` or `pipeline demo cvft`")
    from configs.schema import load_config

    cfg = load_config("demo", args)

    def go(cfg, store, run, reporter):
        from align.runner import run_alignment
        from configs.naming import aligned_alias, extracted_alias, query_gallery_views
        from retrieve.runner import run_retrieval

        say(DEMO_NOTE)
        entries = _stage_extract(cfg, store, reporter)
        run.record_keys({e.alias: e.key for e in entries})
        if all(e.reused for e in entries):
            say(f"all {len(entries)} descriptor entries reused from the cache: the backbone was not run")
        else:
            _report_extract(entries)
        aligned = run_alignment(cfg, store, run, log=reporter.log)
        if aligned and all(e.reused for e in aligned):
            say("aligned descriptors reused from the cache: the alignment was not retrained")
        qv, gv = query_gallery_views(cfg)
        layer = cfg.backbone.layers[-1]
        rows = []
        raw = run_retrieval(
            cfg,
            store,
            run,
            query=extracted_alias(cfg, qv, layer),
            gallery=extracted_alias(cfg, gv, layer),
            out_dir=run.path / "raw",
        )
        rows.append((f"raw layer {layer}", raw))
        if aligned:
            al = run_retrieval(
                cfg,
                store,
                run,
                query=aligned_alias(cfg, qv),
                gallery=aligned_alias(cfg, gv),
                out_dir=run.path / cfg.align.method,
            )
            rows.append((f"{cfg.align.method} (layers {', '.join(map(str, cfg.backbone.layers))})", al))
        run.record(demo={label: m for label, m in rows}, reused_all=all(e.reused for e in entries))
        return rows

    rows = _run_stage("demo", cfg, go)
    _print_metrics(rows)
    out.print(DEMO_NOTE)


DEMO_CVFT_NOTE = (
    "The VGG16 in this demo is randomly initialised (no weights can be downloaded) and the ground–aerial pairs are "
    "synthetic (ground panoramas rendered from aerial tiles by a polar transform): the numbers compare CVFT with its "
    "baselines on a problem with a known spatial correspondence, not what CVFT reaches on CVUSA."
)


def _demo_cvft(overrides: list[str]) -> None:
    from configs.schema import load_config

    base = load_config("demo_cvft", overrides)
    store = _store()
    from extract.synthetic_cvusa import make_synthetic_cvusa

    root = store.root / "datasets" / f"synthetic-cvusa-s{base.seed}"
    if not (root / "splits" / "val-19zl.csv").exists():
        make_synthetic_cvusa(
            root, n_pairs=192, train_pairs=128, aerial_size=128, ground_size=(56, 308), seed=base.seed
        )
    common = [*overrides, f"root={root}"]
    cfg = load_config("demo_cvft", common)

    def go(cfg, store, run, reporter):
        from align.runner import run_alignment
        from configs.naming import aligned_alias
        from extract.runner import run_extraction
        from retrieve.runner import run_retrieval

        say(DEMO_CVFT_NOTE)
        train_cfg = load_config(
            "demo_cvft", [*common, "dataset.split=train", "extract.alias=demo_cvft_train"]
        )
        entries = run_extraction(train_cfg, store, progress=reporter) + run_extraction(
            cfg, store, progress=reporter
        )
        _report_extract(entries)
        rows = []
        for method in ("cvft", "vgg_conv", "vgg_gp"):
            mcfg = load_config(
                "demo_cvft",
                [
                    *common,
                    f"align.method={method}",
                    "align.train_drone=[demo_cvft_train.ground@conv5_3]",
                    "align.train_satellite=[demo_cvft_train.aerial@conv5_3]",
                ],
            )
            run_alignment(mcfg, store, run, log=reporter.log)
            for q, g in (("ground", "aerial"), ("aerial", "ground")):
                m = run_retrieval(
                    mcfg,
                    store,
                    run,
                    query=aligned_alias(mcfg, q),
                    gallery=aligned_alias(mcfg, g),
                    out_dir=run.path / f"{method}-{q}2{g}",
                )
                rows.append((f"{method} {q}→{g}", m))
        run.record(demo={label: m for label, m in rows}, reused_all=all(e.reused for e in entries))
        return rows

    rows = _run_stage("demo", cfg, go)
    _print_metrics(rows)
    out.print(DEMO_CVFT_NOTE)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders (or metrics.json files) to compare."),
    dest: Path = typer.Option(Path("."), "--out", help="Where comparison.md and comparison.csv go."),
) -> None:
    """One table of metrics across runs; also written as Markdown and CSV."""
    from retrieve.compare import compare_runs, write_comparison

    _, markdown, csv_text = compare_runs(list(runs))
    out.print(markdown)
    for p in write_comparison(markdown, csv_text, dest):
        say(f"wrote {p}")


# -- cache ----------------------------------------------------------------------------------------
def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache_app.command("ls")
def cache_ls() -> None:
    """List cache entries (aliases, rows, shape, size, state)."""
    store = _store()
    table = Table(title=f"cache {store.root}")
    for c in ("key", "aliases", "kind", "rows", "shape", "dtype", "size", "state"):
        table.add_column(c)
    for r in store.ls():
        table.add_row(
            r["key"][:12],
            ", ".join(r["aliases"]) or "–",
            r["kind"] or "–",
            str(r["count"] or "–"),
            "×".join(map(str, r["shape"])) if r["shape"] else "–",
            r["dtype"] or "–",
            _human(r["bytes"]),
            "complete" if r["complete"] else "incomplete",
        )
    out.print(table)


@cache_app.command("show")
def cache_show(ref: str) -> None:
    """Print the manifest of an entry (by alias or key)."""
    store = _store()
    entry = store.open(ref)
    out.print_json(entry.manifest.to_json())


@cache_app.command("verify")
def cache_verify(ref: str | None = typer.Argument(None, help="Alias or key; default: every entry.")) -> None:
    """Recompute shard checksums; names every bad shard (exit code 2 if any)."""
    store = _store()
    report = store.verify(ref)
    bad = {k: p for k, p in report.items() if p}
    for k, problems in report.items():
        if not problems:
            say(f"ok       {k[:12]}")
    for k, problems in bad.items():
        for p in problems:
            print(f"BAD      {k[:12]}  {p}", file=sys.stderr)
    if bad:
        raise UserError(
            f"{len(bad)} of {len(report)} entries failed verification; remove them with `pipeline cache rm KEY` and recompute"
        )
    say(f"{len(report)} entries verified")


@cache_app.command("rm")
def cache_rm(refs: list[str]) -> None:
    """Remove entries (by alias or key) and their aliases."""
    store = _store()
    for r in refs:
        say(f"removed {store.rm(r)[:12]} ({r})")


@cache_app.command("gc")
def cache_gc() -> None:
    """Remove incomplete entries nobody is writing, temporary files and dangling aliases."""
    store = _store()
    removed = store.gc()
    for r in removed:
        say(f"removed {r}")
    say(f"{len(removed)} items removed")


@cache_app.command("import")
def cache_import(
    source: Path = typer.Argument(..., help="A .npy/.h5 array file, or a GeoAlign feature folder."),
    alias: str | None = typer.Option(
        None, "--alias", help="Alias (GeoAlign folders: prefix of <alias>.<sat|dro>@<layer>)."
    ),
    labels: Path | None = typer.Option(None, "--labels", help=".npy of int labels (for .npy descriptors)."),
    names: Path | None = typer.Option(
        None, "--names", help="Text file, one name per line (for .npy descriptors)."
    ),
    fmt: str = typer.Option("auto", "--format", help="auto | npy | h5 | geoalign"),
) -> None:
    """Import descriptors into the cache: plain arrays or GeoAlign's torch-saved feature folders."""
    from cache.importers import import_any

    for alias_, key, n in import_any(_store(), source, alias=alias, labels=labels, names=names, fmt=fmt):
        say(f"imported {alias_}  ({n} rows, key {key[:12]})")


@cache_app.command("export")
def cache_export(
    ref: str,
    fmt: str = typer.Option("npy", "--format", help="npy | geoalign"),
    dest: Path = typer.Option(..., "--out", help="Output folder."),
    view: str | None = typer.Option(
        None, "--view", help="geoalign: sat or dro (default: from the entry's view)."
    ),
) -> None:
    """Export an entry as descriptors.npy + labels.npy + names.txt, or in GeoAlign's layout."""
    from cache.importers import export_entry

    for p in export_entry(_store(), ref, fmt=fmt, out=dest, view=view):
        say(f"wrote {p}")


def main() -> None:
    """Console entry point: bad input → one line on stderr, exit code 2."""
    debug = "--debug" in sys.argv
    t0 = time.time()
    try:
        app(standalone_mode=False)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print(
            f"interrupted after {time.time() - t0:.0f} s; rerun the same command to resume", file=sys.stderr
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
