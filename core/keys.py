"""Content keys: sha256 of canonical JSON, never a pickle-based hash, so keys survive library upgrades."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cvgl.core.atomic import write_text_atomic

KEY_VERSION = 1  # bump only when the meaning of a spec field changes


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8, finite numbers only."""

    def check(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            raise ValueError(f"non-finite number {o!r} cannot be part of a cache key")
        if isinstance(o, dict):
            return {str(k): check(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [check(v) for v in o]
        if isinstance(o, Path):
            return o.as_posix()
        return o

    return json.dumps(check(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_key(spec: dict) -> str:
    """The cache key of an entry: sha256 hex of the canonical JSON of its spec."""
    return hashlib.sha256(canonical_json({"key_version": KEY_VERSION, **spec})).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class DigestMemo:
    """sha256 of files memoized by (absolute path, size, mtime_ns) in a JSON file of the cache root.

    Hashing a multi-GB checkpoint takes seconds; the memo makes every later run free. A changed
    file changes size or mtime, so a stale digest is never reused. :meth:`digest` only records;
    :meth:`save` writes the file once, after all the files of one checkpoint are hashed.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, str] = {}
        self._dirty = False
        if path is not None and path.exists():
            try:
                self._data = json.loads(path.read_text())
            except (OSError, ValueError, RecursionError):
                self._data = {}
            if not isinstance(self._data, dict):
                self._data = {}

    def digest(self, file: Path) -> str:
        st = file.stat()
        memo_key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if memo_key not in self._data:
            self._data[memo_key] = file_sha256(file)
            self._dirty = True
        return self._data[memo_key]

    def save(self) -> None:
        """Write the memo when a digest was added since it was read or last saved."""
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self._data))
        self._dirty = False


def files_digest(root: str | os.PathLike, files: Iterable[str], memo: DigestMemo | None = None) -> str:
    """Digest of a checkpoint: ``root``'s own sha256 when ``files`` is ``[""]``, else the digest of the
    listed files under the folder ``root`` (relative path and sha256 of each, in path order).

    The caller decides which files are weights; nothing else under ``root`` is read. The memo is
    saved once, at the end.
    """
    root = Path(root)
    memo = memo or DigestMemo(None)
    names = list(files)
    try:
        if names == [""]:
            return memo.digest(root)
        h = hashlib.sha256()
        for rel in sorted(Path(n) for n in names):
            h.update(rel.as_posix().encode() + b"\0" + memo.digest(root / rel).encode() + b"\n")
        return h.hexdigest()
    finally:
        memo.save()


def file_digest(path: str | os.PathLike, memo: DigestMemo | None = None) -> str:
    """sha256 of one checkpoint file, through the memo."""
    return files_digest(path, [""], memo)


def image_list_digest(root: str | os.PathLike, names: Iterable[str], *, strict: bool = False) -> str:
    """Digest of an image list: relative paths + sizes + mtimes (strict: + content hashes).

    Paths are relative to the dataset root, so moving the whole dataset keeps its keys as long as
    the files keep their mtimes (``cp -p``, ``rsync -a``); strict mode survives any copy.
    """
    root = Path(root)
    h = hashlib.sha256(b"strict\n" if strict else b"stat\n")
    for name in names:
        f = root / name
        # A file name that is not UTF-8 hashes as its own bytes (valid names hash exactly as before).
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            st = f.stat()
            tail = file_sha256(f) if strict else str(st.st_mtime_ns)
        except OSError as e:
            # An entry that cannot be read (a symlink loop, a file gone since listing) must not crash
            # the key: extraction then names it in one line, or --skip-bad leaves it out.
            h.update(f"unreadable {e.errno}\n".encode())
            continue
        h.update(str(st.st_size).encode() + b"\0" + tail.encode() + b"\n")
    return h.hexdigest()
