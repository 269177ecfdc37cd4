"""The cache store: entries by key, aliases, locks, resumable writers, verification and cleanup.

On disk::

    <root>/entries/<key>/manifest.json      written last; its presence means "complete"
    <root>/entries/<key>/shard-00000.h5 …   see cache/shards.py
    <root>/aliases/<alias>                  a text file holding the key the alias points at
    <root>/locks/<key>.lock                 advisory file lock held while an entry is written
    <root>/digests.json                     memo of checkpoint and map sha256s (path, size, mtime)
    <root>/tile-masks/<key>.npy             which tiles of a map hold valid pixels (datasets/maps.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from cvgl.cache.manifest import MANIFEST, Manifest, ShardInfo, read_manifest, write_manifest
from cvgl.cache.shards import (
    ShardIdentity,
    identity_problem,
    read_shard,
    read_shard_attrs,
    shard_name,
    write_shard,
)
from cvgl.core.atomic import write_text_atomic
from cvgl.core.errors import UserError
from cvgl.core.keys import DigestMemo, content_key, file_sha256
from cvgl.core.path_errors import require_writable_folder
from cvgl.core.outputs import MODEL_INDEX

ENV_VAR = "PIPELINE_CACHE_DIR"
ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}$")
KEY_RE = re.compile(r"[0-9a-f]{64}")
# An alias file: one key, optionally followed by a newline; nothing else (checked on bytes).
_ALIAS_FILE_RE = re.compile(rb"[0-9a-f]{64}\n?")
DEFAULT_SHARD_ROWS = 8192


class BadKeyError(UserError, ValueError):
    """Text that is not a cache key where one is needed. A ValueError too, so that code that skips
    unreadable stored records (``except ValueError``) skips a record naming a bad key the same way."""


def is_key(text: object) -> bool:
    """Whether ``text`` is a cache key: 64 lowercase hex digits."""
    return isinstance(text, str) and KEY_RE.fullmatch(text) is not None


def _show(text: str) -> str:
    """Text for a one-line message: as is when printable, else escaped (newlines, undecodable bytes)."""
    return text if text.isprintable() else ascii(text)


def _check_inside(root: Path, path: Path, *, follow: bool) -> Path:
    """``path`` made absolute, refused unless it lies strictly inside ``root`` once symlinks resolve.

    ``follow=False`` resolves only the parent: unlinking a symlink removes the link, not its target.
    """
    base = Path(root).resolve()
    p = Path(path)
    target = p.resolve() if follow else p.parent.resolve() / p.name
    if target == base or not target.is_relative_to(base) or p.name in ("", ".", ".."):
        raise UserError(
            f"refusing to remove {path}: it resolves to {target}, outside the cache root {base}; "
            "nothing was removed (remove it by hand if you mean to)"
        )
    return target


def safe_rmtree(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Remove the folder ``path``, which must resolve inside the cache ``root``; a symlink is unlinked.

    Every folder removal in the cache goes through here, so no stored text (an alias, a key, a
    manifest) can steer a removal outside the cache.
    """
    p = Path(path)
    if p.is_symlink():
        _check_inside(Path(root), p, follow=False)
        p.unlink(missing_ok=True)
        return
    _check_inside(Path(root), p, follow=True)
    shutil.rmtree(p, ignore_errors=True)


def safe_unlink(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Remove the file (or symlink) ``path``, which must lie inside the cache ``root``."""
    _check_inside(Path(root), Path(path), follow=False)
    Path(path).unlink(missing_ok=True)


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, else ``$PIPELINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/cvgl-pipeline``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cvgl-pipeline"


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid alias name (usable as a file name), else a UserError."""
    if not ALIAS_RE.fullmatch(alias):
        raise UserError(
            f"alias {alias!r} is not valid; use letters, digits and . _ @ + = - (starting with a letter or digit)"
        )
    return alias


class Entry:
    """A complete cache entry, read shard by shard."""

    def __init__(self, store: CacheStore, manifest: Manifest) -> None:
        self.store = store
        self.manifest = manifest
        self.dir = store.entry_dir(manifest.key)
        # The manifest's row ranges must tile [0, count): readers locate rows by them.
        row = 0
        for i, s in enumerate(manifest.shards):
            if s.file != shard_name(i):
                # Also keeps stored text from naming a path outside the entry folder.
                raise UserError(
                    f"cache entry {self.label}: manifest {self.dir / MANIFEST} lists shard {s.file!r} where "
                    f"{shard_name(i)} belongs; run `pipeline cache rm {self.label}` and recompute it"
                )
            if s.row_start != row or s.row_end < s.row_start:
                raise UserError(
                    f"cache entry {self.label}: manifest {self.dir / MANIFEST} lists rows {s.row_start}..{s.row_end} "
                    f"for {s.file}, expected to start at {row}; run `pipeline cache rm {self.label}` and recompute it"
                )
            row = s.row_end
        if row != manifest.count:
            raise UserError(
                f"cache entry {self.label}: manifest {self.dir / MANIFEST} says {manifest.count} rows but its shards "
                f"hold {row}; run `pipeline cache rm {self.label}` and recompute it"
            )
        for s in manifest.shards:
            p = self.dir / s.file
            if not p.exists():
                raise UserError(
                    f"cache entry {self.label} is missing shard {p}; run `pipeline cache rm {self.label}` and recompute it"
                )
            if p.stat().st_size != s.bytes:
                raise UserError(
                    f"cache shard {p} has {p.stat().st_size} bytes, the manifest says {s.bytes}: it is corrupt; "
                    f"run `pipeline cache rm {self.label}` and recompute it"
                )

    key = property(lambda self: self.manifest.key)
    count = property(lambda self: self.manifest.count)
    shape = property(lambda self: tuple(self.manifest.shape))
    dim = property(lambda self: self.manifest.dim)
    dtype = property(lambda self: self.manifest.dtype)
    spec = property(lambda self: self.manifest.spec)

    @property
    def label(self) -> str:
        return self.manifest.alias or self.key[:12]

    def shard_paths(self) -> list[Path]:
        """The shard files, in row order."""
        return [self.dir / s.file for s in self.manifest.shards]

    def shard_identities(self) -> list[ShardIdentity]:
        """What the manifest says each shard is: pass one as ``expect`` to every shard read."""
        skipped = self.manifest.extra.get("skipped")
        n_skipped = len(skipped) if isinstance(skipped, list) else 0
        return [
            ShardIdentity(self.label, self.key, i, s.row_start, s.row_end - s.row_start, n_skipped)
            for i, s in enumerate(self.manifest.shards)
        ]

    def iter_chunks(
        self, *, with_names: bool = False, dtype: str | None = "float32"
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[str] | None]]:
        """Yield (descriptors, labels, names|None) shard by shard; memory is one shard at a time."""
        for p, ident in zip(self.shard_paths(), self.shard_identities()):
            desc, labels, names = read_shard(p, with_names=with_names, expect=ident)
            assert desc is not None
            if dtype is not None and desc.dtype != np.dtype(dtype):
                desc = desc.astype(dtype)
            yield desc, labels, names

    def read(self, *, dtype: str | None = "float32") -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The whole entry in memory (for small entries and alignment training)."""
        descs, labels, names = [], [], []
        for d, lab, n in self.iter_chunks(with_names=True, dtype=dtype):
            descs.append(d)
            labels.append(lab)
            names.extend(n or [])
        if not descs:
            return np.zeros((0, *self.shape), dtype=dtype or self.dtype), np.zeros(0, np.int64), []
        return np.concatenate(descs), np.concatenate(labels), names

    def labels(self) -> np.ndarray:
        """Every row's label, without reading the descriptors."""
        parts = [
            read_shard(p, with_descriptors=False, with_names=False, expect=ident)[1]
            for p, ident in zip(self.shard_paths(), self.shard_identities())
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def names(self) -> list[str]:
        """Every row's name, without reading the descriptors."""
        out: list[str] = []
        for p, ident in zip(self.shard_paths(), self.shard_identities()):
            out.extend(read_shard(p, with_descriptors=False, expect=ident)[2] or [])
        return out


@dataclass
class _DoneShard:
    """A complete shard file: its attrs' row range, the input rows it covers, what it left out."""

    file: str
    row_start: int  # first input row (image index) it covers: index · shard_rows
    row_end: int  # row_start + rows stored
    input_end: int  # one past the last input row it covers
    skipped: list[str]
    sha256: str | None  # computed lazily for shards found on disk (another rank may have written them)
    bytes: int


_SHARD_FILE = re.compile(r"^shard-(\d{5,})\.h5$")


@dataclass
class EntryWriter:
    """Writes an entry shard by shard; resumes after the shards complete in an earlier attempt.

    Shard i always covers input rows [i·shard_rows, (i+1)·shard_rows), so an interrupted run and an
    uninterrupted one produce the same shards. Two ways to write:

    * :meth:`add` appends rows in order from :attr:`rows_done` (full shards are written at once,
      the remainder by :meth:`finish`);
    * :meth:`write_shard_rows` writes one given shard, in any order: several processes (ranks) can
      each write their own shards of one entry. This needs ``total_rows`` (the number of input rows),
      so that a short last shard is recognised as complete. Rows that could not be computed (corrupt
      images) may be left out of a shard: it then stores fewer rows than it covers and names the
      skipped inputs in its attrs (``input_end``, ``skipped``); the manifest counts stored rows and
      lists every skipped name in ``extra.skipped``.

    ``cleanup=False`` leaves temporary files and unrecognised shards alone: a second rank must not
    delete the files another rank is writing.
    """

    store: CacheStore
    key: str
    spec: dict
    shape: tuple[int, ...]
    dtype: str
    shard_rows: int
    total_rows: int | None = None
    cleanup: bool = True

    def __post_init__(self) -> None:
        self.dir = self.store.entry_dir(self.key)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._done: dict[int, _DoneShard] = {}
        self._buf: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        self._buf_rows = 0
        self._resume()

    # -- state ----------------------------------------------------------------------------------
    @property
    def shards(self) -> list[ShardInfo]:
        """The complete shards of the contiguous prefix, as the manifest will list them."""
        return self._manifest_shards(self._prefix())

    @property
    def rows_done(self) -> int:
        """Input rows covered by the complete shards of the prefix: the row a sequential caller resumes from."""
        prefix = self._prefix()
        return self._done[prefix[-1]].input_end if prefix else 0

    @property
    def next_row(self) -> int:
        """The row the next :meth:`add` must start with (written plus buffered rows)."""
        return self.rows_done + self._buf_rows

    @property
    def n_shards(self) -> int:
        """How many shards the entry has (needs ``total_rows``)."""
        if self.total_rows is None:
            raise ValueError("n_shards needs total_rows")
        return -(-self.total_rows // self.shard_rows)

    @property
    def done_indices(self) -> set[int]:
        """Indices of the shards already complete on disk (from this or an earlier attempt)."""
        return set(self._done)

    def shard_range(self, index: int) -> tuple[int, int]:
        """Input rows ``[start, end)`` shard ``index`` covers."""
        start = index * self.shard_rows
        end = start + self.shard_rows
        return start, end if self.total_rows is None else min(end, self.total_rows)

    def _prefix(self) -> list[int]:
        out: list[int] = []
        while len(out) in self._done:
            out.append(len(out))
        return out

    # -- resume ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        if self.cleanup:
            for tmp in [*self.dir.glob("*.tmp-*"), *self.dir.glob("*.part")]:
                safe_unlink(self.store.root, tmp)
        self.refresh()
        if self.total_rows is None:
            # Sequential writing continues after the prefix: anything later is recomputed.
            prefix = set(self._prefix())
            for i in [i for i in self._done if i not in prefix]:
                if self.cleanup:
                    safe_unlink(self.store.root, self.dir / self._done[i].file)
                del self._done[i]

    def refresh(self) -> None:
        """Re-read which shards are complete on disk (other processes may have written some).

        A shard counts when its attrs name this key, its index and its row range, and it covers its
        whole input range (a short last shard only when ``total_rows`` says it is the last). Anything
        else with a shard name (a mismatched spec, a short shard of an interrupted sequential run) is
        removed when ``cleanup`` is on, so it is recomputed.
        """
        for p in sorted(self.dir.glob("shard-*.h5")):
            m = _SHARD_FILE.match(p.name)
            index = int(m.group(1)) if m else -1
            if index in self._done and self._done[index].file == p.name:
                continue
            shard = self._check_shard(p, index) if index >= 0 else None
            if shard is not None:
                self._done[index] = shard
            elif self.cleanup:
                safe_unlink(self.store.root, p)

    def _check_shard(self, p: Path, index: int) -> _DoneShard | None:
        start, end = self.shard_range(index)
        if start >= (self.total_rows if self.total_rows is not None else start + 1):
            return None
        try:
            attrs = read_shard_attrs(p)
            row_start, row_end = int(attrs.get("row_start", -1)), int(attrs.get("row_end", -1))
            input_end = int(attrs.get("input_end", row_end))
            ok = (
                attrs.get("key") == self.key
                and int(attrs.get("shard_index", -1)) == index
                and row_start == start
                and input_end == end
                and start <= row_end <= input_end
            )
            skipped = json.loads(attrs["skipped"]) if "skipped" in attrs else []
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not ok or len(skipped) != input_end - row_end:
            return None
        return _DoneShard(p.name, row_start, row_end, input_end, list(skipped), None, p.stat().st_size)

    # -- writing --------------------------------------------------------------------------------
    def _cast(self, descriptors: np.ndarray, names: list[str], first_row: int) -> np.ndarray:
        """Rows in the storage dtype; non-finite values (also float16 overflow) are refused."""
        if tuple(descriptors.shape[1:]) != tuple(self.shape):
            raise ValueError(f"rows of shape {descriptors.shape[1:]} do not fit entry shape {self.shape}")
        with np.errstate(over="ignore"):  # an overflow becomes inf, which the check below reports
            data = np.ascontiguousarray(descriptors, dtype=np.dtype(self.dtype))
        finite = np.isfinite(data.reshape(len(data), int(np.prod(self.shape)))).all(axis=1)
        if not finite.all():
            # Refused at write time, so every complete entry is finite and readers need not check.
            bad = int(np.flatnonzero(~finite)[0])
            raise UserError(
                f"descriptor row {first_row + bad} ({names[bad] if names else '?'}) is NaN or infinite "
                f"in {self.dtype}; check the backbone weights or the alignment run; nothing was marked complete"
            )
        return data

    def add(self, descriptors: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
        """Append rows (in order, starting at ``rows_done``); full shards are written at once."""
        data = self._cast(descriptors, names, self.next_row)
        self._buf.append((data, np.asarray(labels, dtype=np.int64), list(names)))
        self._buf_rows += data.shape[0]
        while self._buf_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, rows: int) -> None:
        desc = np.concatenate([b[0] for b in self._buf])
        labels = np.concatenate([b[1] for b in self._buf])
        names = [n for b in self._buf for n in b[2]]
        index = len(self._prefix())
        self._write(index, desc[:rows], labels[:rows], names[:rows], self.rows_done + rows, [])
        rest = desc.shape[0] - rows
        self._buf = [(desc[rows:], labels[rows:], names[rows:])] if rest else []
        self._buf_rows = rest

    def write_shard_rows(
        self,
        index: int,
        descriptors: np.ndarray,
        labels: np.ndarray,
        names: list[str],
        skipped: list[str] | tuple[str, ...] = (),
    ) -> None:
        """Write shard ``index`` whole: the rows of its input range in order, minus ``skipped`` inputs.

        A shard already complete on disk is left as it is (a resumed or concurrent run computed the
        same rows).
        """
        if self.total_rows is None:
            raise ValueError("write_shard_rows needs an EntryWriter created with total_rows")
        if not 0 <= index < self.n_shards:
            raise ValueError(f"shard index {index} outside 0..{self.n_shards - 1}")
        start, end = self.shard_range(index)
        if (
            len(descriptors) + len(skipped) != end - start
            or len(labels) != len(descriptors)
            or len(names) != len(descriptors)
        ):
            raise ValueError(
                f"shard {index} covers {end - start} rows; got {len(descriptors)} rows + {len(skipped)} skipped"
            )
        if index in self._done:
            return
        data = self._cast(descriptors, names, start)
        self._write(index, data, np.asarray(labels, dtype=np.int64), list(names), end, list(skipped))

    def _write(
        self,
        index: int,
        data: np.ndarray,
        labels: np.ndarray,
        names: list[str],
        input_end: int,
        skipped: list[str],
    ) -> None:
        start = index * self.shard_rows
        final = self.dir / shard_name(index)
        # The skip record is part of the file before it takes its final name (write_shard is atomic).
        extra = {"input_end": input_end, "skipped": json.dumps(skipped)} if skipped else None
        write_shard(
            final,
            data,
            labels,
            names,
            key=self.key,
            index=index,
            row_start=start,
            dtype=self.dtype,
            attrs=extra,
        )
        self._done[index] = _DoneShard(
            final.name, start, start + len(data), input_end, skipped, file_sha256(final), final.stat().st_size
        )

    # -- completion -----------------------------------------------------------------------------
    def _manifest_shards(self, indices: list[int]) -> list[ShardInfo]:
        """ShardInfo in index order; row ranges count stored rows, so they are contiguous in the entry."""
        out, row = [], 0
        for i in indices:
            s = self._done[i]
            if s.sha256 is None:
                s.sha256 = file_sha256(self.dir / s.file)
            n = s.row_end - s.row_start
            out.append(ShardInfo(s.file, row, row + n, s.sha256, s.bytes))
            row += n
        return out

    def finish(
        self,
        *,
        alias: str | None = None,
        parents: list[str] | None = None,
        extra: dict | None = None,
        allow_empty: bool = True,
    ) -> Manifest:
        """Flush the last rows, then write the manifest: from now on the entry is complete.

        With ``total_rows``, every shard must be complete on disk (written by this or another process);
        a missing one is an error naming it, and nothing is marked complete. ``allow_empty=False``
        refuses an entry without rows (every input skipped) the same way.
        """
        if self._buf_rows:
            self._flush(self._buf_rows)
        if self.total_rows is not None:
            self.refresh()
            missing = [i for i in range(self.n_shards) if i not in self._done]
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise UserError(
                    f"cache entry {alias or self.key[:12]} lacks shard(s) {', '.join(map(str, missing[:3]))}{more}; "
                    "rerun the extraction to compute them"
                )
            indices = list(range(self.n_shards))
        else:
            indices = self._prefix()
        shards = self._manifest_shards(indices)
        skipped = [n for i in indices for n in self._done[i].skipped]
        if not allow_empty and not (shards and shards[-1].row_end):
            first = f", e.g. {skipped[0]}" if skipped else ""
            raise UserError(
                f"cache entry {alias or self.key[:12]} would hold no rows: all {len(skipped)} inputs were "
                f"skipped as unreadable{first}; check the dataset"
            )
        extra = dict(extra or {})
        if skipped:
            extra["skipped"] = skipped
        manifest = Manifest(
            key=self.key,
            spec=self.spec,
            count=shards[-1].row_end if shards else 0,
            shape=list(self.shape),
            dtype=self.dtype,
            shards=shards,
            alias=alias,
            parents=list(parents or []),
            extra=extra,
        )
        write_manifest(self.dir, manifest)
        if alias:
            self.store.set_alias(alias, self.key)
        return manifest


class CacheStore:
    """Lookup, locking, writing, verification and cleanup of cache entries under one root."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.entries_dir = self.root / "entries"
        self.aliases_dir = self.root / "aliases"
        self.locks_dir = self.root / "locks"
        self.memo = DigestMemo(self.root / "digests.json")

    def require_writable(self) -> None:
        """Create the cache root if needed; a root that cannot be written is one line, before any work."""
        require_writable_folder(
            self.root, "the cache folder", "give --cache-dir (or PIPELINE_CACHE_DIR) a folder you can write"
        )

    @classmethod
    def open_default(cls, cache_dir: str | os.PathLike | None = None) -> CacheStore:
        return cls(default_cache_dir(cache_dir))

    # -- lookup ---------------------------------------------------------------------------------
    def entry_dir(self, key: str) -> Path:
        """The folder of entry ``key``; anything but a key is refused, so no other path is ever built."""
        if not is_key(key):
            raise BadKeyError(
                f"{_show(str(key))} is not a cache key (64 lowercase hex digits); "
                "name entries by alias, key or key prefix (`pipeline cache ls` lists them)"
            )
        return self.entries_dir / key

    def has(self, key: str) -> bool:
        """Whether entry ``key`` is complete (has its manifest)."""
        return (self.entry_dir(key) / MANIFEST).exists()

    def resolve(self, ref: str) -> str:
        """Key for an alias, a full key, or an unambiguous key prefix (8+ characters).

        An alias file that does not hold exactly one key, or points at an entry that is not in the
        cache, is refused in one line naming the file and the repair.
        """
        if ALIAS_RE.fullmatch(ref) and os.path.lexists(self.aliases_dir / ref):
            key, problem = self._alias_state(ref)
            if problem is not None or key is None:
                raise UserError(problem)
            return key
        if is_key(ref) and self.entry_dir(ref).is_dir():
            return ref
        if len(ref) >= 8 and re.fullmatch(r"[0-9a-f]+", ref):
            hits = [k for k in self.keys() if k.startswith(ref)]
            if len(hits) == 1:
                return hits[0]
        known = [_show(n) for n in self._alias_names()]
        hint = f" (known aliases: {', '.join(known[:12])}{' …' if len(known) > 12 else ''})" if known else ""
        raise UserError(
            f"no cache entry named {ref!r} in {self.root}{hint}; run `pipeline cache ls` or extract it first"
        )

    def open(self, ref: str) -> Entry:
        """A complete entry by alias or key; incomplete or missing entries are refused."""
        key = self.resolve(ref)
        try:
            manifest = read_manifest(self.entry_dir(key))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"cache entry {ref} has an unreadable manifest ({e}); run `pipeline cache rm {ref}` and recompute it"
            ) from None
        if manifest is None:
            raise UserError(
                f"cache entry {ref} is incomplete (an interrupted run); rerun the command that makes it to resume, "
                "or `pipeline cache gc` to remove it"
            )
        if manifest.key != key:
            raise UserError(
                f"cache entry {ref}: manifest {self.entry_dir(key) / MANIFEST} names key {_show(manifest.key)[:12]}, "
                f"not {key[:12]} (copied from another entry); run `pipeline cache rm {ref}` and recompute it"
            )
        return Entry(self, manifest)

    def set_alias(self, alias: str, key: str) -> None:
        """Point ``alias`` at ``key`` (atomically: the alias file is replaced, never half-written)."""
        check_alias(alias)
        if not is_key(key):
            raise BadKeyError(f"cannot point alias {alias} at {_show(str(key))}: not a cache key")
        self.aliases_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.aliases_dir / alias, key + "\n")

    def _alias_names(self) -> list[str]:
        """Names in the alias folder, without hidden (temporary) files."""
        try:
            return sorted(n for n in os.listdir(self.aliases_dir) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _alias_state(self, name: str) -> tuple[str | None, str | None]:
        """``(key, None)`` for a good alias; ``(key or None, problem)`` for an invalid or dangling one."""
        path = self.aliases_dir / name
        shown = _show(str(path))
        if not ALIAS_RE.fullmatch(name):
            return None, f"alias file {shown} has a name that is not a valid alias; remove it with `pipeline cache gc`"
        repair = f"remove it with `pipeline cache rm --alias {name}` or `pipeline cache gc`"
        try:
            with open(path, "rb") as fh:
                raw = fh.read(256)  # a key is 65 bytes: more than this is wrong however it continues
        except IsADirectoryError:
            return None, f"alias file {shown} is a folder, not an alias file; remove it by hand"
        except FileNotFoundError:
            return None, f"alias file {shown} vanished while reading (removed by another command); rerun"
        except OSError as e:
            return None, f"alias file {shown} cannot be read ({e.strerror or e}); {repair}"
        if _ALIAS_FILE_RE.fullmatch(raw):
            key = raw.decode().strip()
            if not self.entry_dir(key).is_dir():
                return key, (
                    f"alias {name} points at entry {key[:12]}, which is not in the cache (a dangling alias file "
                    f"{shown}); {repair}, then rerun the command that makes it"
                )
            return key, None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            what = "is not UTF-8 text"
        else:
            lines = text.strip().splitlines()
            if not lines:
                what = "is empty"
            elif len(lines) > 1:
                what = f"holds {len(lines)} lines"
            else:
                what = f"holds {lines[0][:70]!r}"
        return None, f"alias file {shown} {what}, not one cache key (64 lowercase hex digits); {repair}"

    def aliases(self) -> dict[str, str]:
        """Alias → key for every alias file holding a key (dangling ones too); see :meth:`alias_problems`."""
        out = {}
        for name in self._alias_names():
            key, _ = self._alias_state(name)
            if key is not None:
                out[name] = key
        return out

    def alias_problems(self) -> dict[str, str]:
        """Alias file name → one-line problem, for every invalid or dangling alias file."""
        out = {}
        for name in self._alias_names():
            _, problem = self._alias_state(name)
            if problem is not None:
                out[name] = problem
        return out

    # -- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Exclusive lock for writing ``key``; a second process blocks here until the first is done."""
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        with open(self.locks_dir / f"{key}.lock", "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def is_locked(self, key: str) -> bool:
        p = self.locks_dir / f"{key}.lock"
        if not p.exists():
            return False
        with open(p, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False

    def writer(
        self,
        key: str,
        spec: dict,
        *,
        shape: tuple[int, ...],
        dtype: str = "float16",
        shard_rows: int = DEFAULT_SHARD_ROWS,
        total_rows: int | None = None,
        cleanup: bool = True,
    ) -> EntryWriter:
        """A resumable writer; call under :meth:`lock` (one process of a multi-process job holds it).

        ``total_rows`` enables :meth:`EntryWriter.write_shard_rows` (shards in any order, by several
        processes); ``cleanup=False`` for every process but the one that holds the lock.
        """
        if dtype not in ("float16", "float32"):
            raise UserError(f"storage dtype {dtype!r} is not supported; use float16 or float32")
        return EntryWriter(
            self,
            key,
            spec,
            tuple(int(s) for s in shape),
            dtype,
            int(shard_rows),
            None if total_rows is None else int(total_rows),
            cleanup,
        )

    def put_arrays(
        self,
        spec: dict,
        descriptors: np.ndarray,
        labels: np.ndarray,
        names: list[str],
        *,
        alias: str | None = None,
        parents: list[str] | None = None,
        extra: dict | None = None,
        dtype: str = "float32",
        shard_rows: int = DEFAULT_SHARD_ROWS,
    ) -> Entry:
        """Store in-memory rows as an entry keyed by ``spec`` (reused if already complete)."""
        if descriptors.shape[0] == 0:
            raise UserError(
                f"refusing to cache an empty set of descriptors{f' for {alias}' if alias else ''}"
            )
        if not np.isfinite(descriptors).all():
            raise UserError(
                f"descriptors{f' for {alias}' if alias else ''} contain NaN or infinite values; nothing was cached"
            )
        if len(labels) != descriptors.shape[0] or len(names) != descriptors.shape[0]:
            raise UserError(
                f"{descriptors.shape[0]} descriptors but {len(labels)} labels and {len(names)} names; they must have one row each"
            )
        key = content_key(spec)
        with self.lock(key):
            if not self.has(key):
                w = self.writer(key, spec, shape=descriptors.shape[1:], dtype=dtype, shard_rows=shard_rows)
                start = w.rows_done
                w.add(descriptors[start:], np.asarray(labels)[start:], list(names)[start:])
                w.finish(alias=alias, parents=parents, extra=extra)
            elif alias:
                self.set_alias(alias, key)
        return self.open(key)

    # -- maintenance ----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys of every entry folder, complete or not (folders not named by a key are not entries)."""
        try:
            names = os.listdir(self.entries_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if is_key(n) and (self.entries_dir / n).is_dir())

    def ls(self) -> list[dict]:
        """One row per entry directory, complete or not; an unreadable manifest is a row saying so."""
        by_key: dict[str, list[str]] = {}
        for a, k in self.aliases().items():
            by_key.setdefault(k, []).append(a)
        rows = []
        for key in self.keys():
            d = self.entry_dir(key)
            state = "complete"
            try:
                m = read_manifest(d)
            except (ValueError, KeyError, TypeError):
                m, state = None, "unreadable"  # its manifest; `cache verify` says why
            if m is None and state == "complete":
                state = "incomplete"
            size = 0
            with contextlib.suppress(OSError):  # removed while listing: count what is left
                for f in d.iterdir():
                    with contextlib.suppress(OSError):
                        if f.is_file():
                            size += f.stat().st_size
            rows.append(
                {
                    "key": key,
                    "aliases": by_key.get(key, []),
                    "complete": m is not None,
                    "state": state,
                    "count": m.count if m else None,
                    "shape": m.shape if m else None,
                    "dtype": m.dtype if m else None,
                    "kind": (m.spec.get("kind") if m else None),
                    "bytes": size,
                    "created": m.created if m else None,
                }
            )
        return rows

    def _verify_entry(self, key: str) -> list[str]:
        """Problems of one entry: manifest, row ranges, and per shard its identity and checksum."""
        d = self.entry_dir(key)
        try:
            m = read_manifest(d)
        except (ValueError, KeyError, TypeError) as e:
            return [f"{d / MANIFEST}: unreadable manifest ({e})"]
        if m is None:
            return [f"{d}: incomplete (no manifest); resume it by rerunning, or `pipeline cache gc`"]
        if m.key != key:
            return [f"{d / MANIFEST}: names key {_show(m.key)[:12]}, not {key[:12]} (copied from another entry)"]
        skipped = m.extra.get("skipped")
        n_skipped = len(skipped) if isinstance(skipped, list) else 0
        label = m.alias or key[:12]
        problems: list[str] = []
        expected_row = 0
        for i, s in enumerate(m.shards):
            if s.file != shard_name(i):
                problems.append(f"{d / MANIFEST}: lists shard {s.file!r} where {shard_name(i)} belongs")
                continue
            p = d / s.file
            if s.row_start != expected_row:
                problems.append(f"{p}: rows start at {s.row_start}, expected {expected_row}")
            expected_row = s.row_end
            if not p.exists():
                problems.append(f"{p}: missing")
                continue
            ident = ShardIdentity(label, key, i, s.row_start, s.row_end - s.row_start, n_skipped)
            try:
                with h5py.File(p, "r") as f:
                    foreign = identity_problem(f.attrs, int(f["descriptors"].shape[0]), ident)
            except (OSError, KeyError, ValueError):
                foreign = None  # unreadable as HDF5: the checksum below names it corrupt
            try:
                if foreign is not None:
                    problems.append(f"{p}: not part of this entry: {foreign}")
                elif p.stat().st_size != s.bytes or file_sha256(p) != s.sha256:
                    problems.append(f"{p}: checksum mismatch (corrupt shard)")
            except OSError as e:
                problems.append(f"{p}: unreadable ({e.strerror or e})")
        if expected_row != m.count and not problems:
            problems.append(f"{d}: shards hold {expected_row} rows, manifest says {m.count}")
        # Files beside the shards that the manifest records with a checksum (semi_positives.h5, positions.h5).
        for info in m.extra.values():
            if isinstance(info, dict) and isinstance(info.get("file"), str) and isinstance(info.get("sha256"), str):
                p = d / info["file"]
                try:
                    if file_sha256(p) != info["sha256"]:
                        problems.append(f"{p}: checksum mismatch (altered or corrupt)")
                except OSError as e:
                    problems.append(f"{p}: unreadable ({e.strerror or e})")
        return problems

    def verify(self, ref: str | None = None) -> dict[str, list[str]]:
        """Check every entry (or ``ref``): manifest, shard identity and checksums.

        Returns {key: [problem, …]} (empty list = good); alias files are checked by
        :meth:`alias_problems`.
        """
        keys = [self.resolve(ref)] if ref else self.keys()
        return {key: self._verify_entry(key) for key in keys}

    def model_problems(self) -> dict[str, list[str]]:
        """Problems of the trained models under ``models/``: every file a model's ``model-files.json``
        lists must be there as a regular file. Returns {run digest: [problem, …]} for bad models only."""
        out: dict[str, list[str]] = {}
        models = self.root / "models"
        if not models.is_dir():
            return out
        for d in sorted(models.iterdir()):
            index = d / MODEL_INDEX
            if not d.is_dir() or d.is_symlink() or not index.is_file():
                continue  # a model still training (its index is written last), or not a model folder
            try:
                listed = json.loads(index.read_text(encoding="utf-8")).get("files")
            except (OSError, ValueError, AttributeError):
                listed = None
            if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
                out[d.name] = [f"{index}: unreadable list of model files"]
                continue
            missing = [f for f in listed if Path(f).name != f or not (d / f).is_file() or (d / f).is_symlink()]
            if missing:
                out[d.name] = [f"{d / f}: missing (listed in {MODEL_INDEX})" for f in missing]
        return out

    def rm(self, ref: str) -> str:
        """Remove an entry (by alias, key or key prefix) and every alias pointing at it; returns its key."""
        key = self.resolve(ref)
        d = self.entry_dir(key)
        with self.lock(key):
            # The manifest goes first: an interrupted removal leaves an incomplete entry, never a
            # "complete" one with shards missing.
            safe_unlink(self.root, d / MANIFEST)
            safe_rmtree(self.root, d)
        for a, k in self.aliases().items():
            if k == key:
                safe_unlink(self.root, self.aliases_dir / a)
        safe_unlink(self.root, self.locks_dir / f"{key}.lock")
        return key

    def rm_alias(self, name: str) -> Path:
        """Remove just the alias file ``name`` (whatever it holds); the entry stays. Returns its path."""
        check_alias(name)
        p = self.aliases_dir / name
        if not os.path.lexists(p):
            raise UserError(f"no alias file {p}; `pipeline cache ls` lists the aliases")
        if p.is_dir() and not p.is_symlink():
            raise UserError(f"{p} is a folder, not an alias file; remove it by hand")
        safe_unlink(self.root, p)
        return p

    def gc(self, *, older_than_s: float = 0.0) -> list[str]:
        """Remove incomplete entries nobody is writing, stray temporary files, and alias files that are
        invalid or point at no complete entry (only inside the alias folder)."""
        removed = []
        now = time.time()
        for key in self.keys():
            d = self.entry_dir(key)
            if (d / MANIFEST).exists() or self.is_locked(key):
                for tmp in d.glob("*.tmp-*"):
                    if not self.is_locked(key):
                        safe_unlink(self.root, tmp)
                continue
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another command
                if now - d.stat().st_mtime >= older_than_s:
                    safe_rmtree(self.root, d)
                    removed.append(key)
        for name in self._alias_names():
            key, problem = self._alias_state(name)
            if problem is None and key is not None and self.has(key):
                continue
            p = self.aliases_dir / name
            if p.is_dir() and not p.is_symlink():
                continue  # not an alias file the tool wrote; `cache verify` reports it
            safe_unlink(self.root, p)
            removed.append(f"alias {_show(name)}")
        return removed
