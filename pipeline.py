"""The `pipeline` command line: parse, load the config, call a stage. Nothing else lives here."""

from __future__ import annotations

import importlib
import sys
import time
import traceback
import warnings
from pathlib import Path

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
    """Run one stage inside a run folder and progress bars; a failure marks the run folder failed."""
    from configs.run import RunFolder

    store = _store()
    run = RunFolder(cfg, stage, cache_root=store.root)
    try:
        with Reporter(STATE.quiet) as reporter:
            try:
                result = fn(cfg, store, run, reporter)
            except BaseException:
                # The error must be the only thing on stderr. Progress.stop() would render the bars
                # once more into a file or pipe and add a blank line after them; stopping its live
                # display as transient instead erases the bars on a terminal and prints nothing
                # elsewhere.
                progress, reporter.progress = reporter.progress, None
                if progress is not None:
                    progress.live.transient = True
                    progress.live.stop()
                raise
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


@app.command(context_settings={"allow_extra_args": True})
def sweep(
    args: list[str] | None = CONFIG_ARGS,
    grid: list[str] | None = typer.Option(
        None, "--grid", help="KEY=\\[v1,v2,…]: an axis; the points are the product of every --grid axis."
    ),
    zipped: list[str] | None = typer.Option(
        None, "--zip", help="KEY=\\[v1,v2,…]: axes that vary together (all of one length)."
    ),
) -> None:
    """A grid of runs: each point an ordinary `run` in DIR/points/<n>/; table in DIR/sweep.csv and sweep.md.

    Extraction runs first (once per distinct setting); then the points run in parallel
    (sweep.n_jobs, sweep.backend=loky|dask, sweep.scheduler=tcp://…). Rerun the same command to resume.
    """
    from configs.sweep import build_sweep
    from retrieve.sweep import run_sweep

    path, overrides = _split_args(args)
    spec = build_sweep(path, overrides, grid, zipped)
    say(f"sweep of {len(spec.points)} points into {spec.out}")
    with Reporter(STATE.quiet) as reporter:
        result = run_sweep(spec, _store().root, progress=reporter, log=say)
    out.print(result.markdown, markup=False, highlight=False)
    for p in result.files:
        say(f"wrote {p}")
    if result.failed:
        raise UserError(
            f"{result.failed} of {len(result.rows)} sweep points failed (status and error in "
            f"{spec.out / 'sweep.csv'}); fix them and rerun the same command: finished points are reused"
        )


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
            r.get("state") or ("complete" if r["complete"] else "incomplete"),
        )
    out.print(table)
    # Bad alias files are listed, not fatal: `ls` is how a user finds what to repair.
    for name, problem in store.alias_problems().items():
        out.print(f"bad alias {name!r}: {problem}", markup=False, highlight=False)


@cache_app.command("show")
def cache_show(ref: str) -> None:
    """Print the manifest of an entry (by alias or key)."""
    store = _store()
    entry = store.open(ref)
    out.print_json(entry.manifest.to_json())


@cache_app.command("verify")
def cache_verify(ref: str | None = typer.Argument(None, help="Alias or key; default: every entry.")) -> None:
    """Recompute shard checksums, check shard identity and alias files; names every problem (exit code 2 if any)."""
    store = _store()
    report = store.verify(ref)
    # Alias files are checked when verifying the whole cache (a named alias is checked by resolving it).
    bad_aliases = store.alias_problems() if ref is None else {}
    bad = {k: p for k, p in report.items() if p}
    for k, problems in report.items():
        if not problems:
            say(f"ok       {k[:12]}")
    for k, problems in bad.items():
        for p in problems:
            print(f"BAD      {k[:12]}  {p}", file=sys.stderr)
    for name, problem in bad_aliases.items():
        print(f"BAD      alias {name!r}  {problem}", file=sys.stderr)
    if bad or bad_aliases:
        what = []
        if bad:
            what.append(f"{len(bad)} of {len(report)} entries failed verification")
        if bad_aliases:
            what.append(f"{len(bad_aliases)} alias file(s) are invalid or dangling")
        raise UserError(
            f"{' and '.join(what)}; remove bad entries with `pipeline cache rm KEY` and recompute, "
            "bad alias files with `pipeline cache rm --alias NAME` or `pipeline cache gc`"
        )
    say(f"{len(report)} entries verified")


@cache_app.command("rm")
def cache_rm(
    refs: list[str] | None = typer.Argument(None, help="Entries to remove, by alias, key or key prefix."),
    aliases: list[str] | None = typer.Option(
        None, "--alias", help="Remove just this alias file (the entry stays); repeatable."
    ),
) -> None:
    """Remove entries (by alias or key) and their aliases, or with --alias just an alias file."""
    if not refs and not aliases:
        raise UserError("name the entries to remove (alias or key), or an alias file with --alias NAME")
    store = _store()
    for name in aliases or []:
        say(f"removed alias file {store.rm_alias(name)}")
    for r in refs or []:
        say(f"removed {store.rm(r)[:12]} ({r})")


@cache_app.command("gc")
def cache_gc() -> None:
    """Remove incomplete entries nobody is writing, temporary files, invalid or dangling aliases, and
    retrieval indexes whose gallery entry is gone or changed."""
    from retrieve.indexes import gc_indexes

    store = _store()
    removed = store.gc()
    removed += gc_indexes(store)
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
    fmt: str = typer.Option(
        "auto",
        "--format",
        help="auto | npy | h5 | geoalign | mat (University-1652 pytorch_result.mat) | hloc (global-descriptor "
        "HDF5) | vpr (VPR-methods-evaluation log folder)",
    ),
) -> None:
    """Import descriptors into the cache: plain arrays or GeoAlign's torch-saved feature folders."""
    from cache.importers import import_any

    for alias_, key, n in import_any(_store(), source, alias=alias, labels=labels, names=names, fmt=fmt):
        say(f"imported {alias_}  ({n} rows, key {key[:12]})")


@cache_app.command("export")
def cache_export(
    ref: str,
    fmt: str = typer.Option(
        "npy", "--format", help="npy | geoalign | mat (one side of <out>/pytorch_result.mat; --view query|gallery)"
    ),
    dest: Path = typer.Option(..., "--out", help="Output folder."),
    view: str | None = typer.Option(
        None, "--view", help="geoalign: sat or dro (default: from the entry's view)."
    ),
) -> None:
    """Export an entry as descriptors.npy + labels.npy + names.txt, or in GeoAlign's layout."""
    from cache.importers import export_entry

    for p in export_entry(_store(), ref, fmt=fmt, out=dest, view=view):
        say(f"wrote {p}")


def _cli_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """Every exception class called ``name`` that the installed typer may raise.

    typer up to 0.25 raises click's own classes; from 0.26 it vendors click as ``typer._click`` (and
    later has its own ``Exit`` and ``Abort``), which ``except click.…`` does not catch. Looking in
    every place keeps the error contract with each typer the dependency bounds allow.
    """
    found: list[type[BaseException]] = []
    for module in ("typer", "typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def _one_line(text: str) -> str:
    """``text`` folded onto one line: an error is exactly one line on stderr."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _usage_message(e: BaseException) -> str:
    """A click usage error as one line, pointing at the help of the command it concerns."""
    msg = _one_line(e.format_message())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        msg += f" (see '{ctx.command_path} --help')"
    return msg


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Warnings of a successful command, one line each and each once, after its output."""
    seen: set[str] = set()
    for w in caught:
        line = _one_line(f"warning: {w.message}")
        if line not in seen:
            seen.add(line)
            print(line, file=sys.stderr)


def _interrupted(t0: float) -> None:
    print(f"interrupted after {time.time() - t0:.0f} s; rerun the same command to resume", file=sys.stderr)
    sys.exit(130)


def main() -> None:
    """Console entry point: bad input → one line on stderr, exit code 2."""
    debug = "--debug" in sys.argv
    usage_errors = _cli_exceptions("ClickException")
    exits = _cli_exceptions("Exit")
    aborts = _cli_exceptions("Abort")
    t0 = time.time()
    caught: list[warnings.WarningMessage] = []
    try:
        # Library warnings (torch, numpy, …) would add lines around an error: they are recorded, then
        # dropped on an error and shown one line each after a successful command. --debug shows them
        # as Python prints them.
        with warnings.catch_warnings(record=not debug) as log:
            caught = log if log is not None else []
            result = app(prog_name="pipeline", standalone_mode=False)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (OSError, RuntimeError) as e:
        # Last resort for a full disk met outside the tool's own writers (which already say so).
        from configs.diskspace import is_no_space, no_space_error

        if debug or not is_no_space(e):
            raise
        print(f"error: {no_space_error(getattr(e, 'filename', None) or 'a file')}", file=sys.stderr)
        sys.exit(2)
    except exits as e:
        _show_warnings(caught)
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except usage_errors as e:
        code = e.exit_code  # type: ignore[attr-defined]
        if type(e).__name__ == "NoArgsIsHelpError":
            # A bare group (`pipeline`, `pipeline cache`) shows its help; some typers print it
            # themselves and leave the message empty.
            text = e.format_message()  # type: ignore[attr-defined]
            if text.strip():
                print(text)
            sys.exit(code)
        if debug:
            traceback.print_exc()
        print(f"error: {_usage_message(e)}", file=sys.stderr)
        sys.exit(2 if code in (1, 2) else code)
    except (KeyboardInterrupt, *aborts):
        _interrupted(t0)
    _show_warnings(caught)
    # Without standalone mode an Exit comes back as its code, and typer turns Ctrl-C into Exit(130);
    # the commands themselves return None.
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        if result == 130:
            _interrupted(t0)
        sys.exit(result)


if __name__ == "__main__":
    main()
