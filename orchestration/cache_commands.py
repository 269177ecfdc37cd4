"""``pipeline cache …``: list, show, verify, remove and collect cache entries, and import or export
other tools' feature files; the commands are built by :func:`cache_commands` for the face's app."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import typer
from cvgl.cache.store import CacheStore
from cvgl.core.console import cache_table
from cvgl.core.errors import UserError
from rich.console import Console


def cache_commands(
    open_store: Callable[[], CacheStore], say: Callable[[str], None], out: Console
) -> typer.Typer:
    """The ``cache`` command group: ``open_store()`` opens the cache the command line names, ``say`` prints
    a message (unless quiet), ``out`` prints results."""
    app = typer.Typer(no_args_is_help=True, help="Inspect and maintain the feature cache.")

    @app.command("ls")
    def cmd_cache_ls() -> None:
        """List cache entries (aliases, rows, shape, size, state)."""
        store = open_store()
        out.print(cache_table(f"cache {store.root}", store.ls()))
        # Bad alias files are listed, not fatal: `ls` is how a user finds what to repair.
        for name, problem in store.alias_problems().items():
            out.print(f"bad alias {name!r}: {problem}", markup=False, highlight=False)

    @app.command("show")
    def cmd_cache_show(ref: str) -> None:
        """Print the manifest of an entry (by alias or key)."""
        store = open_store()
        entry = store.open(ref)
        out.print_json(entry.manifest.to_json())

    @app.command("verify")
    def cmd_cache_verify(
        ref: str | None = typer.Argument(None, help="Alias or key; default: every entry."),
    ) -> None:
        """Recompute shard checksums, check shard identity and alias files; names every problem (exit code 2 if any)."""
        store = open_store()
        report = store.verify(ref)
        # Alias files are checked when verifying the whole cache (a named alias is checked by resolving it).
        bad_aliases = store.alias_problems() if ref is None else {}
        # Trained models too (their files listed in model-files.json), when verifying the whole cache.
        bad_models = store.model_problems() if ref is None else {}
        bad = {k: p for k, p in report.items() if p}
        for k, problems in report.items():
            if not problems:
                say(f"ok       {k[:12]}")
        for k, problems in bad.items():
            for p in problems:
                print(f"BAD      {k[:12]}  {p}", file=sys.stderr)
        for name, problem in bad_aliases.items():
            print(f"BAD      alias {name!r}  {problem}", file=sys.stderr)
        for digest, problems in bad_models.items():
            for p in problems:
                print(f"BAD      model {digest[:12]}  {p}", file=sys.stderr)
        if bad or bad_aliases or bad_models:
            what = []
            if bad:
                what.append(f"{len(bad)} of {len(report)} entries failed verification")
            if bad_aliases:
                what.append(f"{len(bad_aliases)} alias file(s) are invalid or dangling")
            if bad_models:
                what.append(f"{len(bad_models)} trained model(s) miss files")
            fixes = (
                "remove bad entries with `pipeline cache rm KEY` and recompute, bad alias files with "
                "`pipeline cache rm --alias NAME` or `pipeline cache gc`"
            )
            if bad_models:
                fixes += (
                    ", a model missing files by removing <cache>/models/<digest> and its aligned entries, "
                    "then rerunning the alignment"
                )
            raise UserError(f"{' and '.join(what)}; {fixes}")
        say(f"{len(report)} entries verified")

    @app.command("rm")
    def cmd_cache_rm(
        refs: list[str] | None = typer.Argument(None, help="Entries to remove, by alias, key or key prefix."),
        aliases: list[str] | None = typer.Option(
            None, "--alias", help="Remove just this alias file (the entry stays); repeatable."
        ),
    ) -> None:
        """Remove entries (by alias or key) and their aliases, or with --alias just an alias file."""
        if not refs and not aliases:
            raise UserError("name the entries to remove (alias or key), or an alias file with --alias NAME")
        store = open_store()
        for name in aliases or []:
            say(f"removed alias file {store.rm_alias(name)}")
        for r in refs or []:
            say(f"removed {store.rm(r)[:12]} ({r})")

    @app.command("gc")
    def cmd_cache_gc() -> None:
        """Remove incomplete entries nobody is writing, temporary files, invalid or dangling aliases, and
        retrieval indexes whose gallery entry is gone or changed."""
        from cvgl.retrieve.indexes import gc_indexes

        store = open_store()
        removed = store.gc()
        removed += gc_indexes(store)
        for r in removed:
            say(f"removed {r}")
        say(f"{len(removed)} items removed")

    @app.command("import")
    def cmd_cache_import(
        source: Path = typer.Argument(..., help="A .npy/.h5 array file, or a GeoAlign feature folder."),
        alias: str | None = typer.Option(
            None, "--alias", help="Alias (GeoAlign folders: prefix of <alias>.<sat|dro>@<layer>)."
        ),
        labels: Path | None = typer.Option(
            None, "--labels", help=".npy of int labels (for .npy descriptors)."
        ),
        names: Path | None = typer.Option(
            None, "--names", help="Text file, one name per line (for .npy descriptors)."
        ),
        fmt: str = typer.Option(
            "auto",
            "--format",
            help="auto | npy | h5 | geoalign | mat (University-1652 pytorch_result.mat) | hloc (global-descriptor "
            "HDF5) | vpr (VPR-methods-evaluation log folder); a .csv is a positions table (name,lat,lon or "
            "name,utm_east,utm_north) for the entry --alias",
        ),
        prefix: list[str] = typer.Option(
            [],
            "--prefix",
            help="hloc: PREFIX=ROLE, repeatable; one entry <alias>.<ROLE> per image-name prefix "
            "(e.g. --prefix db/=gallery --prefix query/=query).",
        ),
    ) -> None:
        """Import descriptors into the cache: plain arrays, GeoAlign folders, other tools' files, positions."""
        from cvgl.cache.formats import parse_prefixes
        from cvgl.cache.interop import import_any

        got = import_any(
            open_store(),
            source,
            alias=alias,
            labels=labels,
            names=names,
            fmt=fmt,
            prefixes=parse_prefixes(prefix),
        )
        for alias_, key, n in got:
            say(f"imported {alias_}  ({n} rows, key {key[:12]})")

    @app.command("export")
    def cmd_cache_export(
        ref: str,
        fmt: str = typer.Option(
            "npy",
            "--format",
            help="npy | geoalign | mat (one side of <out>/pytorch_result.mat; --view query|gallery)",
        ),
        dest: Path = typer.Option(..., "--out", help="Output folder."),
        view: str | None = typer.Option(
            None, "--view", help="geoalign: sat or dro (default: from the entry's view)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace files of the same names in --out (default: only new files are written)."
        ),
    ) -> None:
        """Export an entry as descriptors.npy + labels.npy + names.txt, or in GeoAlign's layout; an entry
        with positions (map tiles, located photos) also gets positions.csv."""
        from cvgl.cache.interop import export_entry

        for p in export_entry(open_store(), ref, fmt=fmt, out=dest, view=view, overwrite=overwrite):
            say(f"wrote {p}")

    return app
