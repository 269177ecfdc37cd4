"""The alignment stage, once for every method: inputs, keys, reuse or training, entries and checkpoints.

For ``align.method`` (a :class:`align.registry.Method`) the stage finds and checks the inputs
(:mod:`align.inputs`), resolves the parameters, derives the run digest and the aligned entries' keys,
and reuses the entries when the cache holds them. Otherwise it trains the method with a
:class:`TrainJob` (resumable states, per-epoch history, checkpoints under
``<cache>/models/<run digest>/``), encodes each view and caches the aligned entries. The model's files
are listed in ``model-files.json`` (written last) and linked into the run folder, also by a rerun that
reuses the entries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from cvgl.align import training
from cvgl.align.checkpoints import (
    link_into,
    model_files,
    record_model_files,
    save_checkpoint,
    torch_save_atomic,
)
from cvgl.align.inputs import Inputs, load_inputs
from cvgl.align.registry import Method, MethodKey, default_key, get, resolve_params
from cvgl.align.training import TrainerOptions
from cvgl.cache.naming import aligned_alias
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import Config
from cvgl.core.atomic import write_text_atomic
from cvgl.core.devices import resolve_device
from cvgl.core.diskspace import disk_full_is_user_error
from cvgl.core.keys import content_key
from cvgl.core.run_folder import RunFolder

LogFn = Callable[[str, int, int, dict], None]  # (description, epoch, epochs, losses)
# Per-epoch values shown in progress (all numeric ones go to history.jsonl).
_SHOWN = ("loss", "rec", "decor", "pl_acc", "pl_acc_reliable", "eps")


@dataclass
class AlignedEntry:
    """An aligned entry the stage wrote or reused."""

    view: str
    key: str
    alias: str
    count: int
    reused: bool


class StateFile:
    """Resumable training state under the cache's model folder (torch.save; loads weights_only).

    With ``history`` (the run's list of per-epoch records) the saved state also carries this model's
    records so far, and :meth:`load` puts them back, so a resumed run's ``history.jsonl`` lists every
    epoch, not only those trained after the resume.
    """

    def __init__(self, folder: Path, name: str, history: list[dict] | None = None) -> None:
        self.path = folder / f"state-{name}.pt"
        self.name = name
        self.history = history

    def load(self) -> dict | None:
        """The saved state, or None (none saved, or one cut short by a kill: start over)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a state cut short by a kill: start over rather than fail
            return None
        if self.history is not None and isinstance(state, dict):
            done = int(state.get("epoch", 0))
            kept = [h for h in state.pop("run_history", []) if int(h.get("epoch", -1)) < done]
            self.history[:] = [h for h in self.history if h.get("model") != self.name] + kept
        return state

    def save(self, epoch: int, state: dict) -> None:
        """Write ``state`` (with this model's history so far) atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.history is not None:
            state = {**state, "run_history": [dict(h) for h in self.history if h.get("model") == self.name]}
        torch_save_atomic(state, self.path)

    def clear(self) -> None:
        """Remove the state: the run it belongs to is complete."""
        self.path.unlink(missing_ok=True)


def publish_model(model_dir: Path, run: RunFolder) -> list[str]:
    """Link the trained model's files (kept in the cache) into the run folder and record where they are.

    The cache's ``models/<run digest>/`` is the source of truth: a rerun that reuses the aligned entries
    finds the same checkpoints there. Entries made before models were kept in the cache have none; the
    run then records an empty list.
    """
    files = model_files(model_dir)
    link_into(model_dir, files, run.path)
    run.record(model={"dir": str(model_dir), "files": files})
    return files


@dataclass
class TrainJob:
    """What a method's ``train`` gets: its inputs and parameters, and the stage's services.

    ``train`` maps a role to a training view (``dro``/``sat`` for descriptors, ``ground``/``aerial``
    for conv maps). A method saves each model with :meth:`save`, asks :meth:`state` for its resumable
    state and reports epochs through :meth:`on_epoch` (or ``history`` and ``log`` directly).
    """

    cfg: Config
    params: Any
    inputs: Inputs
    device: torch.device
    dtype: str
    model_dir: Path
    run_digest: str
    log: LogFn | None = None
    history: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    states: list[StateFile] = field(default_factory=list)

    @property
    def train(self) -> dict[str, Any]:
        return self.inputs.train

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def state(self, name: str, *, with_history: bool = True) -> StateFile:
        """The resumable state file of model ``name`` (removed once the entries are written)."""
        state = StateFile(self.model_dir, name, self.history if with_history else None)
        self.states.append(state)
        return state

    def on_epoch(self, name: str, epochs: int) -> Callable[[int, dict], None]:
        """A trainer's ``on_epoch(epoch, metrics)``: history.jsonl records, progress for ``log``."""

        def on_epoch(epoch: int, metrics: dict) -> None:
            self.history.append(
                {
                    "model": name,
                    "epoch": epoch,
                    **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                }
            )
            if self.log:
                self.log(
                    f"align {name}", epoch + 1, epochs, {k: v for k, v in metrics.items() if k in _SHOWN}
                )

        return on_epoch

    def trainer_options(self, name: str, epochs: int) -> TrainerOptions:
        """What every descriptor trainer takes besides its data and parameters: seed, device, dtype,
        progress, and the resumable state of model ``name`` (loaded now, saved on the trainer's schedule)."""
        state = self.state(name)
        return TrainerOptions(
            seed=self.seed,
            device=str(self.device),
            dtype=self.dtype,
            on_epoch=self.on_epoch(name, epochs),
            state=state.load(),
            save_state=state.save,
            save_interval_s=training.STATE_SAVE_INTERVAL_S,
        )

    def save(self, name: str, model: torch.nn.Module, config: dict) -> None:
        """Checkpoint ``model`` as ``<name>.safetensors`` + ``<name>.json`` in the model folder."""
        save_checkpoint(self.model_dir, name, model, config)
        self.files += [f"{name}.safetensors", f"{name}.json"]

    def add_file(self, name: str) -> Path:
        """Another file of the model (written by the method); returns its path in the model folder."""
        self.files.append(name)
        return self.model_dir / name


def _run_spec(cfg: Config, mkey: MethodKey, method: Method, inputs: Inputs) -> dict:
    """What the run digest covers: the method, its part of the key (its parameters), the seed, the
    input entries."""
    run = dict(mkey.run)
    return {"method": method.name, "params": run.pop("params", {}), "seed": cfg.seed, **inputs.key, **run}


def _reuse(
    store: CacheStore, run: RunFolder, inputs: Inputs, keys: dict, aliases: dict, model_dir: Path
) -> list:
    for v in inputs.eval:
        store.set_alias(aliases[v], keys[v])
    run.record_keys({aliases[v]: keys[v] for v in inputs.eval})
    publish_model(model_dir, run)
    return [AlignedEntry(v, keys[v], aliases[v], iv.count, True) for v, iv in inputs.eval.items()]


def _train(job: TrainJob, method: Method, run: RunFolder) -> Any:
    """Train, then write history.jsonl and model-files.json (last) and link the model into the run."""
    assert method.train is not None
    model = method.train(job)
    with disk_full_is_user_error(job.model_dir):  # a method that saved nothing has no folder yet
        job.model_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job.model_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in job.history))
    # The cache keeps the model (its source of truth); the run folder gets links to it.
    record_model_files(job.model_dir, [*job.files, "history.jsonl"])
    publish_model(job.model_dir, run)
    return model


def run_alignment(
    cfg: Config, store: CacheStore, run: RunFolder, *, log: LogFn | None = None
) -> list[AlignedEntry]:
    """Train ``cfg.align.method`` on cached entries and cache the aligned entries (reused when cached)."""
    method = get(cfg.align.method)
    if method.inputs == "none":
        return []
    inputs = load_inputs(cfg, store, method.inputs)
    params = resolve_params(method, cfg.align.params, inputs.sizes)
    mkey = (method.key or default_key)(cfg, params, inputs)
    run_spec = _run_spec(cfg, mkey, method, inputs)
    digest = content_key({"kind": "alignment-run", **run_spec})
    specs = {
        v: {"kind": "aligned", "run": digest, "view": v, "parents": iv.keys, **mkey.entry}
        for v, iv in inputs.eval.items()
    }
    keys = {v: content_key(s) for v, s in specs.items()}
    aliases = {v: aligned_alias(cfg, v) for v in inputs.eval}
    run.record_keys(inputs.parents)
    run.record(alignment={"method": method.name, "run_digest": digest, "transductive": inputs.transductive})
    model_dir = store.root / "models" / digest
    if all(store.has(k) for k in keys.values()):
        return _reuse(store, run, inputs, keys, aliases, model_dir)

    job = TrainJob(
        cfg,
        params,
        inputs,
        resolve_device(cfg.align.device, "align.device"),
        run_spec.get("dtype", "float32"),
        model_dir,
        digest,
        log,
    )
    model = _train(job, method, run)
    out = []
    assert method.encode is not None
    with torch.no_grad():
        for v, iv in inputs.eval.items():
            entry = store.put_arrays(
                specs[v],
                method.encode(model, iv, inputs.roles[v]),
                iv.labels,
                iv.names,
                alias=aliases[v],
                parents=iv.keys,
                extra={"view": v, "method": method.name, "run_digest": digest},
                dtype="float32",
            )
            out.append(AlignedEntry(v, entry.key, aliases[v], entry.count, False))
    for state in job.states:
        state.clear()
    run.record_keys({a.alias: a.key for a in out})
    return out
