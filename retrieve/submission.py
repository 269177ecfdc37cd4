"""University-1652 extras: the University-160k ``answer.txt`` and multi-query evaluation.

``answer.txt`` (``retrieve.answer=PATH``), as University-1652's ``test_160k.py`` writes it: one line per
query, in the order of the challenge's ``query_drone_name.txt`` (``retrieve.answer_order=FILE``; its
loader keeps each stripped line as a file name under ``query_drone_160k/``), holding the top-10 gallery
satellite ids separated by tabs. A satellite id is the gallery image's file name without its extension
(``make_dataset_160k_sat``: ``os.path.splitext(fname)[0]``). The lists are the run's final top-K lists
(exact, from an index, or re-ranked, as ``per_query.csv``).

Multi-query (``retrieve.multi_query=true``), as University-1652's ``test.py`` does it for drone queries
(the block after feature extraction, "we use the avg feature as the final feature"; live code with
``which_query == 3`` in the baseline's v2.0, kept only as a disabled string in later versions, where
``--multi`` merely lists a ``multi-query`` folder and ``evaluate_gpu.py`` says multi-query is unused):
every view's
descriptor is L2-normalized (its ``extract_feature`` normalizes each image's feature), the views of
one location (query label) are summed, and the sum is L2-normalized again; the locations come in
sorted label order (``np.unique``). Summing and averaging give the same direction, so the mean is
used. Rows with a negative label (unknown / distractor) belong to no location and stay single queries.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np
from cvgl.core.atomic import write_new_text
from cvgl.core.errors import UserError
from cvgl.core.path_errors import read_text_file
from cvgl.core.outputs import output_file, run_folder_names

ANSWER_TOPK = 10


def multi_query(
    desc: np.ndarray, labels: np.ndarray, names: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One query per location: the normalized mean of its L2-normalized views.

    Returns descriptors [n_locations + n_unlabelled, d], their labels, and names (the views' common
    folder, e.g. ``query_drone/0001``, else the first view's name).
    """
    x = np.asarray(desc, np.float32).reshape(desc.shape[0], -1)
    labels = np.asarray(labels, np.int64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero descriptor has no direction: leave it zero rather than dividing by zero.
    x = x / np.where(norms > 0, norms, 1.0)
    locations = np.unique(labels[labels >= 0])
    single = np.flatnonzero(labels < 0)
    out = np.empty((len(locations) + len(single), x.shape[1]), np.float32)
    out_names: list[str] = []
    for i, loc in enumerate(locations):
        rows = np.flatnonzero(labels == loc)
        out[i] = x[rows].mean(axis=0)
        parents = {str(PurePosixPath(names[r]).parent) for r in rows}
        parent = parents.pop() if len(parents) == 1 else ""
        out_names.append(parent if parent not in ("", ".") else names[rows[0]])
    out[len(locations) :] = x[single]
    out_names.extend(names[r] for r in single)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.where(norms > 0, norms, 1.0)
    return out, np.concatenate([locations, labels[single]]).astype(np.int64), out_names


def answer_rows(order_file: str | Path | None, q_names: list[str]) -> np.ndarray:
    """Query rows in the order of ``order_file`` (one query file name per line), or all rows in order.

    A line matches the query whose name equals it or ends with ``/<line>`` (names are relative to the
    dataset root, the file lists names inside ``query_drone_160k/``). Unknown or ambiguous lines are
    errors: a shifted answer file would be scored against the wrong queries.
    """
    if order_file is None:
        return np.arange(len(q_names), dtype=np.int64)
    path = Path(order_file).expanduser()
    if not path.is_file():
        raise UserError(
            f"retrieve.answer_order file {path} not found; give the challenge's query_drone_name.txt"
        )
    text = read_text_file(path, "retrieve.answer_order file", "give the challenge's query_drone_name.txt")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise UserError(f"retrieve.answer_order file {path} lists no queries; give query_drone_name.txt")
    index: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, name in enumerate(q_names):
        parts = PurePosixPath(name).parts
        for k in range(len(parts)):
            suffix = "/".join(parts[k:])
            if suffix in index and index[suffix] != i:
                ambiguous.add(suffix)
            index.setdefault(suffix, i)
    rows = []
    missing = []
    for ln in lines:
        key = ln.replace("\\", "/")
        while key.startswith("./"):
            key = key[2:]
        if key in ambiguous:
            raise UserError(
                f"{ln!r} in {path} matches several queries; give paths relative to the dataset root to tell them apart"
            )
        if key not in index:
            missing.append(ln)
            continue
        rows.append(index[key])
    if missing:
        raise UserError(
            f"{len(missing)} of {len(lines)} queries listed in {path} are not in the query set "
            f"(first: {missing[0]!r}); retrieve the query view the list was made for"
        )
    return np.asarray(rows, np.int64)


def satellite_id(name: str) -> str:
    """University-1652's 160k satellite id: the file name without its extension."""
    return os.path.splitext(PurePosixPath(name.replace("\\", "/")).name)[0]


def write_answer(
    path: Path, rows: np.ndarray, topk: np.ndarray, g_names: list[str], *, overwrite: bool = False
) -> Path:
    """Write ``answer.txt``: for each query row in ``rows``, its top-10 satellite ids, tab-separated.

    ``path`` comes from :func:`answer_path`. Written to a temporary name and renamed, so an interrupted
    run leaves no partial answer file; without ``overwrite`` a file that appeared at ``path`` meanwhile
    is kept and the write is refused.
    """
    text = "".join(
        "\t".join(satellite_id(g_names[j]) for j in topk[r][:ANSWER_TOPK] if j >= 0) + "\n" for r in rows
    )
    try:
        write_new_text(path, text, replace=overwrite, option="retrieve.answer", overwrite_option=ANSWER_OVERWRITE)
    except OSError as e:
        raise UserError(f"retrieve.answer={path} cannot be written ({e.strerror or e}); give a path you can write to") from None
    return path


#: The setting that lets ``retrieve.answer`` replace an existing file.
ANSWER_OVERWRITE = "retrieve.answer_overwrite=true"


def answer_path(answer: str, out_dir: Path, *, overwrite: bool = False) -> Path:
    """``retrieve.answer`` checked by the one rule for outputs (core/outputs.py): a relative path is
    inside the run's output folder, an existing file needs ``retrieve.answer_overwrite=true``, and the
    tool's own file names in that folder are refused."""
    return output_file(
        answer,
        out_dir,
        option="retrieve.answer",
        overwrite=overwrite,
        overwrite_option=ANSWER_OVERWRITE,
        reserved=run_folder_names(),
    )
