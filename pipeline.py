"""The face of cvgl: the Python API and the `pipeline` command line over it.

The API (``from cvgl import pipeline``): :func:`load_config`, :func:`extract`, :func:`align`,
:func:`retrieve`, :func:`run`, :func:`open_entry`, :func:`evaluate`; each stage call makes a run folder
and returns a :class:`StageResult` (the calls live in :mod:`cvgl.orchestration.chain`). The command
line (``cmd_*``) parses, calls the API and prints through :mod:`cvgl.core.console`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from cvgl.configs.schema import PROTOCOLS  # the accepted protocols; a test ties them to retrieve.metrics
from cvgl.core.cli import run_cli
from cvgl.core.console import Progress, Reporter, metrics_table, stderr_console, stdout_console
from cvgl.core.console import say as _say
from cvgl.core.errors import UserError
from cvgl.orchestration.cache_commands import cache_commands
from cvgl.orchestration.chain import (
    StageResult,
    align,
    evaluate,
    extract,
    in_run_folder,
    open_entry,
    retrieve,
    run,
)

if TYPE_CHECKING:
    from cvgl.configs.schema import Config

__all__ = [
    "Progress",
    "Reporter",
    "StageResult",
    "UserError",
    "align",
    "evaluate",
    "extract",
    "load_config",
    "open_entry",
    "retrieve",
    "run",
]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Feature cache and retrieval pipeline for cross-view geo-localization.\n\n"
    "extract (backbone → cache) · align (cached descriptors → aligned descriptors) · retrieve (exact R@K / AP).",
    pretty_exceptions_enable=False,
)
out = stdout_console()
err = stderr_console()


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no messages (for scripts)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    STATE.cache_dir, STATE.quiet, STATE.debug = cache_dir, quiet, debug


def say(msg: str) -> None:
    """A message on stderr, unless --quiet."""
    _say(err, msg, quiet=STATE.quiet)


# -- the Python API -------------------------------------------------------------------------------
def load_config(config: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """A validated config: a YAML file or a shipped config's name (``"demo"``), then ``section.field=value``
    overrides, exactly as on the command line. Bad input raises ``UserError`` naming the fix."""
    from cvgl.align.registry import check_config
    from cvgl.configs.schema import load_config as load

    cfg = load(config, list(overrides))
    # align.method and align.params are checked now, before any stage runs (configs/ knows no method).
    check_config(cfg)
    return cfg




# -- the command line's display -------------------------------------------------------------------
def _reporter() -> Reporter:
    """The command line's progress: bars on a terminal, plain lines elsewhere, nothing with --quiet."""
    return Reporter(STATE.quiet, err)


def _cli_stage(call: Callable[..., StageResult], cfg: Config) -> StageResult:
    """An API stage call with --cache-dir and the command line's progress; says where the run folder is."""
    with _reporter() as reporter:
        result = call(cfg, cache_dir=STATE.cache_dir, progress=reporter)
    if result.run_dir is not None:
        say(f"run folder: {result.run_dir}")
    return result


# -- stage helpers --------------------------------------------------------------------------------
def _split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load(args: list[str] | None, default: str | None = None):
    path, overrides = _split_args(args)
    return load_config(path or default, overrides)


def _store():
    from cvgl.cache.store import CacheStore

    return CacheStore.open_default(STATE.cache_dir)


def _report_entries(entries) -> None:
    for e in entries:
        say(f"{'reused  ' if e.reused else 'computed'} {e.alias}  ({e.count} rows, key {e.key[:12]})")


def _run_stage(stage: str, cfg, fn):
    """``fn(cfg, store, run, reporter)`` in a run folder with the command line's progress (the demos)."""
    with _reporter() as reporter:
        result, run_dir = in_run_folder(
            stage, cfg, STATE.cache_dir, lambda cfg, store, folder: fn(cfg, store, folder, reporter)
        )
    if run_dir is not None:
        say(f"run folder: {run_dir}")
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


@app.command("extract", context_settings={"allow_extra_args": True})
def cmd_extract(
    args: list[str] | None = CONFIG_ARGS,
    skip_bad: bool = SKIP_BAD,
    launcher: str | None = LAUNCHER,
    nproc: int | None = NPROC,
) -> None:
    """Run the frozen backbone over a dataset and cache per-layer descriptors (skips cached entries)."""
    _report_entries(_cli_stage(extract, _load(_extract_flags(args, skip_bad, launcher, nproc))).entries)


@app.command("align")
def cmd_align(args: list[str] | None = CONFIG_ARGS) -> None:
    """Train an alignment method on cached descriptors and cache the aligned descriptors.

    Inputs: align.query / align.gallery (lists of entry aliases, one per layer), by default the
    extraction's entries <name>.<view>@<layer>. Outputs: <align.alias or name.method>.<view>.
    """
    _report_entries(_cli_stage(align, _load(args)).aligned)


def _print_metrics(m: dict) -> None:
    """The run's row, after its baseline's (retrieve.baseline; raw descriptors by default) when it has one."""
    rows = [(f"{m['query']} → {m['gallery']}", m)]
    if isinstance(b := m.get("baseline"), dict):
        base = {"protocol": m["protocol"], "n_gallery": m.get("n_gallery"), **b}
        rows.insert(0, (f"{b.get('query', b['source'])} → {b.get('gallery', '')} ({b['label']})", base))
    out.print(metrics_table(rows))


@app.command("retrieve", help="Exact retrieval metrics: query=ALIAS gallery=ALIAS "
             f"protocol={'|'.join(PROTOCOLS)} out=DIR.")
def cmd_retrieve(args: list[str] | None = CONFIG_ARGS) -> None:
    m = _cli_stage(retrieve, _load(args)).metrics
    assert m is not None
    _print_metrics(m)


@app.command("run")
def cmd_run(
    args: list[str] | None = CONFIG_ARGS,
    skip_bad: bool = SKIP_BAD,
    launcher: str | None = LAUNCHER,
    nproc: int | None = NPROC,
) -> None:
    """extract → align → retrieve; each stage reuses what the cache already holds."""
    result = _cli_stage(run, _load(_extract_flags(args, skip_bad, launcher, nproc)))
    _report_entries(result.entries)
    _report_entries(result.aligned)
    m = result.metrics
    assert m is not None
    _print_metrics(m)


@app.command("sweep", context_settings={"allow_extra_args": True})
def cmd_sweep(
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
    from cvgl.orchestration.sweep import run_sweep
    from cvgl.orchestration.sweep_spec import build_sweep

    path, overrides = _split_args(args)
    spec = build_sweep(path, overrides, grid, zipped)
    with _reporter() as reporter:
        result = run_sweep(spec, _store().root, progress=reporter, log=say)
    out.print(result.markdown, markup=False, highlight=False)
    for p in result.files:
        say(f"wrote {p}")
    if result.failed:
        raise UserError(
            f"{result.failed} of {len(result.rows)} sweep points failed (status and error in "
            f"{spec.out / 'sweep.csv'}); fix them and rerun the same command: finished points are reused"
        )



@app.command()
def demo(
    args: list[str] | None = typer.Argument(
        None,
        help="[geoalign|cvft|map] then section.field=value overrides of configs/demo.yaml or configs/demo_cvft.yaml.",
    ),
    world: bool = typer.Option(
        True, "--world/--no-world", help="Also the second table: the methods on synthetic descriptors."
    ),
) -> None:
    """A synthetic end-to-end run on CPU. `demo` (default): drone→satellite with a small random DINOv3, a
    sweep over raw, ISMS, GeoAlign stream 1, fusion and EM-CVGL, then the same methods on synthetic
    descriptors with a known drone distortion. `demo cvft`: ground→aerial with a random VGG16 and CVFT
    against its baselines. `demo map`: a drone flight located on a synthetic georeferenced map, in metres."""
    from cvgl.orchestration.demos import DemoUI, demo_cvft, demo_geoalign

    args = list(args or [])
    which = args.pop(0) if args and "=" not in args[0] else "geoalign"
    ui = DemoUI(say=say, out=out, store=_store, run_stage=_run_stage, report_entries=_report_entries)
    if which == "cvft":
        return demo_cvft(args, ui)
    if which == "map":
        from cvgl.orchestration.demo_map import demo_map

        return demo_map(args, say=ui.say, out=ui.out, run_stage=ui.run_stage)
    if which != "geoalign":
        raise UserError(f"unknown demo {which!r}; use `pipeline demo`, `pipeline demo cvft` or `pipeline demo map`")
    demo_geoalign(args, world, ui)


@app.command("compare")
def cmd_compare(
    runs: list[Path] = typer.Argument(..., help="Run folders (or metrics.json files) to compare."),
    dest: Path = typer.Option(Path("."), "--out", help="Where comparison.md and comparison.csv go."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace comparison.md and comparison.csv in --out (default: new files only)."
    ),
) -> None:
    """One table of metrics across runs; also written as Markdown and CSV."""
    from cvgl.retrieve.compare import compare_runs, write_comparison

    _, markdown, csv_text = compare_runs(list(runs))
    out.print(markdown)
    for p in write_comparison(markdown, csv_text, dest, overwrite=overwrite):
        say(f"wrote {p}")


# `pipeline cache …`: its commands are in cvgl.orchestration.cache_commands.
app.add_typer(cache_commands(_store, say, out), name="cache")


def main() -> None:
    """Console entry point (``pipeline``): bad input → one line on stderr, exit code 2."""
    run_cli(app)


if __name__ == "__main__":
    main()
