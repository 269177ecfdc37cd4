"""Sweep grids: which runs a ``pipeline sweep`` is made of.

A sweep is a base config (a YAML file or a shipped name, plus ``section.field=value`` overrides) and
axes: ``--grid KEY=[v1,v2,…]`` axes are crossed (cartesian product, the first axis varying slowest),
``--zip KEY=[…]`` axes vary together (all of one length) and are crossed with the grid as one axis.
The same axes can be written in the config's ``sweep:`` section (``sweep.grid`` / ``sweep.zip``;
nested mappings read as dotted paths); an axis given on the command line replaces the YAML one.

Every point is an ordinary ``run`` config whose ``out`` is ``DIR/points/<n>``. Points get their own
entry aliases (a digest of what decides the entries), so points that run at the same time never
repoint an alias another point is reading; aliases are names only, never part of a cache key.

This module only reads and validates configs (every point's, method and parameters included, before
anything runs); running the points is :mod:`orchestration.sweep`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cvgl.align.registry import check_config
from cvgl.configs.schema import SHORTHANDS, Config, SweepConfig, load_config, split_override, to_dict
from cvgl.core.bounded_yaml import YAMLBoundError, load_yaml
from cvgl.core.errors import UserError

# What decides the extracted entries: points equal in these sections share their extraction.
EXTRACTION_SECTIONS = ("dataset", "backbone", "preprocess", "pooling", "extract")
# Run-only knobs that cannot change an entry (left out of the extraction group).
_EXTRACT_RUN_ONLY = ("alias", "num_workers", "launcher", "nproc", "skip_bad")


@dataclass
class Axis:
    """One swept field and its values, in the order given."""

    key: str
    values: list[Any]
    zipped: bool = False


@dataclass
class Point:
    """One run of the sweep: its axis values and its resolved config (``out`` = its run folder)."""

    index: int
    values: dict[str, Any]
    config: Config
    group: str  # digest of the extraction sections: points with one group share their extraction

    @property
    def folder(self) -> Path:
        """The point's run folder."""
        return Path(str(self.config.out))

    def override_args(self) -> list[str]:
        """The point's axis values as ``key=value`` overrides (values written as JSON, a YAML subset)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.values.items()]


@dataclass
class Sweep:
    """A validated sweep: the base config, its axes, the settings and every point."""

    config_path: str | None
    base_overrides: list[str]
    axes: list[Axis]
    settings: SweepConfig
    out: Path
    points: list[Point]

    @property
    def axis_keys(self) -> list[str]:
        """Swept fields, in table order (grid axes first, then zipped ones)."""
        return [a.key for a in self.axes]

    def command(self, point: Point) -> list[str]:
        """An equivalent ``pipeline run`` command line for one point (it repeats the point exactly)."""
        cfg = point.config
        pinned = [
            f"extract.alias={cfg.extract.alias}",
            f"align.alias={cfg.align.alias}",
            f"out={cfg.out}",
        ]
        head = [self.config_path] if self.config_path else []
        base = [o for o in self.base_overrides if _override_key(o) not in ("out",)]
        return ["pipeline", "run", *head, *base, *point.override_args(), *pinned]


def display(value: Any) -> str:
    """An axis value as a table cell: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _override_key(item: str) -> str:
    key = split_override(item)[0]
    return SHORTHANDS.get(key, key)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _flatten(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{align: {stream1_layer: [..]}}`` → ``[("align.stream1_layer", [..])]``; lists are axes, mappings nest."""
    out: list[tuple[str, Any]] = []
    for k, v in mapping.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            if not v:
                raise UserError(f"sweep axis {key} is empty; give a list of values, e.g. {key}=[a,b]")
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def parse_axis(item: str, flag: str) -> tuple[str, Any]:
    """``KEY=[v1,v2]`` (a ``--grid`` / ``--zip`` argument) → (dotted key, YAML-parsed values)."""
    key, text = split_override(
        item, what=flag, form="KEY=[v1,v2,...]", example=f"{flag} align.method=[isms,geoalign]"
    )
    try:
        values = load_yaml(text, f"{flag} {item[:60]!r}") if text.strip() else None
    except YAMLBoundError as e:
        raise UserError(str(e)) from None
    except yaml.YAMLError:
        raise UserError(f"{flag} {item!r}: the values are not a YAML list; write {key}=[v1,v2,...]") from None
    return key, values


def _axis(key: str, values: Any, zipped: bool) -> Axis:
    key = SHORTHANDS.get(key, key)
    flag = "--zip" if zipped else "--grid"
    if key == "out" or key == "sweep" or key.startswith("sweep."):
        raise UserError(f"{key} cannot be a sweep axis: it configures the sweep itself; set it once as {key}=...")
    if values is None or (isinstance(values, (list, tuple)) and len(values) == 0):
        raise UserError(f"sweep axis {key} is empty; give at least one value, e.g. {flag} {key}=[a,b]")
    if not isinstance(values, (list, tuple)):
        raise UserError(
            f"sweep axis {key}={display(values)} is not a list; write {flag} {key}=[{display(values)}] or list several values"
        )
    return Axis(key, list(values), zipped)


def collect_axes(
    settings: SweepConfig, grid_args: list[str] | None, zip_args: list[str] | None
) -> list[Axis]:
    """The sweep's axes: the YAML ``sweep.grid`` / ``sweep.zip`` sections, then the command line's."""
    grid: dict[str, Any] = {}
    zipped: dict[str, Any] = {}
    for target, section, name in ((grid, settings.grid, "grid"), (zipped, settings.zip, "zip")):
        if not isinstance(section, dict):
            raise UserError(f"sweep.{name} must be a mapping of KEY: [values]")
        for k, v in _flatten(section, ""):
            target[SHORTHANDS.get(k, k)] = v
    seen_cli: set[str] = set()
    for args, target, flag in ((grid_args, grid, "--grid"), (zip_args, zipped, "--zip")):
        for item in args or []:
            k, v = parse_axis(item, flag)
            k = SHORTHANDS.get(k, k)
            if k in seen_cli:
                raise UserError(f"sweep axis {k} is given twice; give each field one list of values")
            seen_cli.add(k)
            # A command-line axis replaces the YAML one of the same field, whichever kind it was.
            grid.pop(k, None)
            zipped.pop(k, None)
            target[k] = v
    axes = [_axis(k, v, False) for k, v in grid.items()] + [_axis(k, v, True) for k, v in zipped.items()]
    if not axes:
        raise UserError(
            "a sweep needs at least one axis: --grid KEY=[v1,v2] (or a sweep.grid section in the config)"
        )
    zaxes = [a for a in axes if a.zipped]
    if len({len(a.values) for a in zaxes}) > 1:
        lengths = ", ".join(f"{a.key} has {len(a.values)}" for a in zaxes)
        raise UserError(f"--zip axes must have the same number of values ({lengths}); give each as many")
    return axes


def _check_axes(path: str | None, base: list[str], axes: list[Axis]) -> None:
    """Every axis names a config field, and every value parses for it (checked one value at a time)."""
    for a in axes:
        for v in a.values:
            try:
                load_config(path, [*base, f"{a.key}={json.dumps(v)}"])
            except UserError as e:
                msg = str(e)
                if msg.startswith("unknown config key") or "is not a section" in msg:
                    raise UserError(f"sweep axis {a.key}: {msg}") from None
                raise UserError(f"{msg} (sweep axis {a.key}={display(v)})") from None


SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


def check_scheduler_address(address: str) -> None:
    """Refuse a ``sweep.scheduler`` that is not a Dask scheduler address, before anything connects.

    Dask reads ``SCHEME://HOST:PORT`` (tcp, tls, ws, wss, ucx; inproc:// takes any name) or a bare
    ``HOST:PORT`` (tcp); anything else could never connect, so nothing is waited for.
    """
    text = str(address).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    ok = scheme in SCHEDULER_SCHEMES and bool(rest)
    if ok and scheme != "inproc":
        host, colon, port = rest.rpartition(":")
        ok = bool(colon) and bool(host.strip("[]")) and port.isdigit() and 0 < int(port) < 65536 and "/" not in rest
    if not ok:
        raise UserError(
            f"sweep.scheduler={_printable(text)} is not a Dask scheduler address; write it as tcp://HOST:PORT "
            "(the address the scheduler prints when it starts)"
        )


def _printable(text: str) -> str:
    return text if text.isprintable() else ascii(text)


def point_aliases(cfg: Config) -> Config:
    """``cfg`` with entry aliases of its own: ``<base>.x<extraction digest>`` for the extracted entries and
    ``<base>.<method>.a<run digest>`` for the aligned ones. Keys are untouched (aliases are not in them)."""
    base = cfg.extract.alias or cfg.name
    group = extraction_group(cfg)
    extract = dataclasses.replace(cfg.extract, alias=f"{base}.x{group[:10]}")
    whole = to_dict(cfg)
    for k in ("out", "sweep"):
        whole.pop(k, None)
    run = _digest(whole)[:10]
    align_base = cfg.align.alias or f"{base}.{cfg.align.method}"
    align = dataclasses.replace(cfg.align, alias=f"{align_base}.a{run}")
    return dataclasses.replace(cfg, extract=extract, align=align)


def extraction_group(cfg: Config) -> str:
    """Digest of everything that decides a config's extracted entries (equal digest, shared extraction)."""
    d = to_dict(cfg)
    part = {s: d[s] for s in EXTRACTION_SECTIONS}
    part["extract"] = {k: v for k, v in part["extract"].items() if k not in _EXTRACT_RUN_ONLY}
    return _digest(part)


def build_sweep(
    config_path: str | None,
    overrides: list[str] | None,
    grid_args: list[str] | None = None,
    zip_args: list[str] | None = None,
) -> Sweep:
    """Validate a sweep and expand it into points (nothing is run or written)."""
    base = list(overrides or [])
    cfg = load_config(config_path, base)
    settings = cfg.sweep
    if settings.n_jobs < 0:
        raise UserError(f"sweep.n_jobs must be 0 (one per core) or a positive number, got {settings.n_jobs}")
    if settings.timeout <= 0:
        raise UserError(f"sweep.timeout must be a positive number of seconds, got {settings.timeout}")
    if settings.scheduler and settings.backend != "dask":
        raise UserError("sweep.scheduler is set but sweep.backend is loky; add sweep.backend=dask")
    if settings.scheduler:
        check_scheduler_address(settings.scheduler)
    axes = collect_axes(settings, grid_args, zip_args)
    _check_axes(config_path, base, axes)
    out = Path(cfg.out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}").absolute()

    grid = [[(a.key, v) for v in a.values] for a in axes if not a.zipped]
    zaxes = [a for a in axes if a.zipped]
    if zaxes:
        grid.append([tuple((a.key, a.values[i]) for a in zaxes) for i in range(len(zaxes[0].values))])
    combos = list(itertools.product(*grid))
    width = max(3, len(str(len(combos) - 1)))
    points = []
    for i, combo in enumerate(combos):
        values: dict[str, Any] = {}
        for item in combo:
            pairs = item if isinstance(item[0], tuple) else (item,)
            values.update(dict(pairs))
        folder = out / "points" / f"{i:0{width}d}"
        args = [*base, *(f"{k}={json.dumps(v)}" for k, v in values.items()), f"out={folder}"]
        try:
            pcfg = load_config(config_path, args)
        except UserError as e:
            shown = " ".join(f"{k}={display(v)}" for k, v in values.items())
            raise UserError(f"{e} (sweep point {shown})") from None
        try:
            # The method and its parameters too, for every point, before anything runs.
            check_config(pcfg)
        except UserError as e:
            shown = " ".join(f"{k}={display(v)}" for k, v in values.items())
            raise UserError(f"{e} (sweep point {shown})") from None
        pcfg = point_aliases(dataclasses.replace(pcfg, sweep=SweepConfig()))
        points.append(Point(i, values, pcfg, extraction_group(pcfg)))
    return Sweep(config_path, base, axes, settings, out, points)
