"""How much memory an input may claim: declared array sizes are checked before anything is allocated.

A file's header says how big its arrays are (a ``.npy`` shape, an HDF5 dataset's extent, a ``.mat``
variable's dims). A corrupt or hostile header can declare terabytes in a few bytes; allocating it ends
in ``MemoryError`` or in the kernel killing the process. :func:`check_fits_in_memory` compares a
declared size with the memory this process can still get (``MemAvailable``, and the cgroup's
``memory.max`` less its usage when a container limits it) before the read.
"""

from __future__ import annotations

import os
from pathlib import Path

from cvgl.core.errors import UserError

_CGROUP = Path("/sys/fs/cgroup")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((_CGROUP / "memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None where the system does not say."""
    found = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(found) if found else None


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def check_fits_in_memory(nbytes: int, what: str, *, copies: int = 2, available: int | None = None) -> None:
    """One line when ``what`` (declared as ``nbytes``) needs more than the memory available.

    ``copies``: how many arrays of that size reading it holds at once (the data and a converted copy).
    ``available`` defaults to :func:`available_memory`; with no figure from the system, nothing is refused.
    """
    avail = available_memory() if available is None else available
    if avail is None or nbytes * copies <= avail:
        return
    raise UserError(
        f"{what} declares {human_bytes(nbytes)} of data, more than the {human_bytes(avail)} of memory available "
        f"(reading it needs about {copies}×); the header is corrupt, or split the data into smaller files"
    )
