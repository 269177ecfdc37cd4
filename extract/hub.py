"""Backbone weights named by a Hugging Face Hub repo id (``backbone.weights=org/name``).

A value that is an existing local path is always a path. Anything else shaped like a repo id
(``<org>/<name>``) is resolved through ``huggingface_hub.snapshot_download``: from the local Hub cache
when offline (``HF_HUB_OFFLINE=1``; the cache is ``HF_HUB_CACHE``, else ``$HF_HOME/hub``), downloaded
into it when online. Only weight files and JSON configs are fetched. The result is a local folder (or
the single checkpoint file in it, for repos that hold a ``.pth``), read by the same loaders as local
weights, and digested for the cache key exactly as a local folder or file would be: the same
checkpoint gives the same key whether it came from the Hub or from disk.
"""

from __future__ import annotations

import re
from pathlib import Path

from cvgl.core.errors import UserError

# Hub repo ids: one '/' between an owner and a name of letters, digits, '-', '_', '.'.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.pth", "*.pt"]
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


def is_hub_id(weights: str) -> bool:
    """True when ``weights`` is not an existing local path but has the shape of a Hub repo id."""
    try:
        if Path(weights).expanduser().exists():
            return False
    except OSError:  # a name the system refuses (too long, …) is a path; the path checks name it
        return False
    return bool(_REPO_ID.fullmatch(weights)) and not weights.endswith(_CHECKPOINT_SUFFIXES)


def resolve_weights(weights: str | None) -> str | None:
    """``backbone.weights`` as a local path: unchanged for paths and None, resolved for Hub repo ids."""
    if not weights or not is_hub_id(weights):
        return weights
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = constants.HF_HUB_OFFLINE
    cache = constants.HF_HUB_CACHE
    try:
        folder = Path(snapshot_download(repo_id=weights, allow_patterns=_WEIGHT_PATTERNS))
    except GatedRepoError:
        raise UserError(
            f"Hugging Face repo {weights} is gated: accept its terms on https://huggingface.co/{weights}, "
            "then run `huggingface-cli login` (or set HF_TOKEN) and retry"
        ) from None
    except IncompleteSnapshotError:
        raise UserError(
            f"the cached copy of {weights} in {cache} is incomplete; run once online (HF_HUB_OFFLINE=0) to "
            "finish the download, then HF_HUB_OFFLINE=1 works"
        ) from None
    except LocalEntryNotFoundError:
        how = "downloads are off (HF_HUB_OFFLINE=1)" if offline else "the Hub could not be reached"
        raise UserError(
            f"backbone.weights={weights} is no local path, and the Hugging Face repo is not in the cache "
            f"{cache} and {how}; download it once online "
            "(unset HF_HUB_OFFLINE), or run with HF_HUB_OFFLINE=1 and HF_HUB_CACHE set to a populated cache"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"no Hugging Face repo {weights} (or it is private); check the id, or run `huggingface-cli login`"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(
            f"could not download {weights} ({type(e).__name__}); check the network, or run with "
            "HF_HUB_OFFLINE=1 and a populated Hugging Face cache"
        ) from None
    return str(_checkpoint_in(folder, weights))


def _checkpoint_in(folder: Path, repo_id: str) -> Path:
    """The folder itself when it is a Hugging Face model folder, else its only checkpoint file."""
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return folder
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(_CHECKPOINT_SUFFIXES))
    if len(files) == 1:
        return files[0]
    if not files:
        raise UserError(
            f"Hugging Face repo {repo_id} holds no model.safetensors or .pth checkpoint ({folder}); "
            "point backbone.weights at a repo with DINOv3 or VGG16 weights"
        )
    raise UserError(
        f"Hugging Face repo {repo_id} holds several checkpoints ({', '.join(p.name for p in files[:4])}); "
        "download the one you want and set backbone.weights to its path"
    )
