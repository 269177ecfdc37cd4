"""Typed experiment configuration: dataclasses with the papers' defaults, validated from YAML.

YAML only selects and overrides. Unknown keys are an error naming the closest valid key; every
field can be overridden from the command line as ``section.field=value`` (the value is parsed as
YAML, so ``backbone.layers=[26,28]`` and ``align.fusion=true`` work), and a few frequent fields have
short names (``query=``, ``gallery=``, ``protocol=``, ``out=``, ``root=``, ``mode=`` …).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cvgl.core.bounded_yaml import YAMLBoundError, load_yaml
from cvgl.core.errors import UserError
from cvgl.datasets.layouts.registry import LAYOUT_NAMES, default_mode

PROTOCOLS = ("u1652", "geoalign", "cvft", "vigor", "map", "vpr")
# R@K reported when retrieve.ks is not set: VPR-methods-evaluation's --recall_values, else R@1/5/10.
DEFAULT_KS = {"vpr": [1, 5, 10, 20]}


def _choices(*values: Any, default: Any) -> Any:
    return field(default=default, metadata={"choices": values})


@dataclass
class SyntheticConfig:
    """The generated dataset (University-1652 layout) used by the demo and tests."""

    n_locations: int = 40
    n_distractors: int = 20
    views_per_location: int = 6
    size: int = 128
    seed: int = 0


@dataclass
class TilesConfig:
    """How ``dataset.layout=map`` / ``uav_visloc`` cut the maps into gallery tiles (datasets/maps.py)."""

    size_m: float | None = None  # tile side in metres at scale 1 (required for the map layouts)
    stride_m: float | None = None  # grid step in metres at scale 1; None = size_m / 2
    scales: list[float] = field(default_factory=lambda: [1.0])  # tile sizes as multiples of size_m
    px: int = 256  # side of the resampled tile fed to the backbone (before preprocess.resize)


@dataclass
class DatasetConfig:
    layout: str = _choices(*LAYOUT_NAMES, default="u1652")  # datasets.layouts.registry
    root: str | None = None
    split: str = "test"  # u1652/sues200: test | train; cvusa/cvact: train | val (test = val)
    # D2S, S2D (also G2S, S2G, D2G, G2D for street views); cvusa/cvact: G2A, A2G. Unset: the layout's
    # natural direction in the layout registry (vigor G2S, cvusa/cvact G2A, every other layout D2S)
    mode: str | None = None
    views: list[str] = field(default_factory=list)  # empty: the query and gallery views of `mode`
    altitude: int | None = None  # SUES-200 flight height (150, 200, 250, 300)
    model: str = "dinov3_vith16plus"  # geoalign_release: the feats_test/<model> folder
    strict_digest: bool = False  # hash image contents for the cache key, not only size + mtime
    area: str = _choices("same", "cross", default="same")  # VIGOR: same-area or cross-area split
    gps: str | None = None  # positions file (DenseUAV Dense_GPS_ALL.txt format) for retrieve.geo
    maps: list[str] = field(default_factory=list)  # layout=map: the GeoTIFFs the gallery tiles
    tiles: TilesConfig = field(default_factory=TilesConfig)  # layout=map / uav_visloc tiling
    query_positions: str | None = None  # layout=map: CSV name,lat,lon[,time,height,yaw]; None = EXIF GPS
    frame_interval_s: float | None = None  # seconds between frames of a sequence whose frames have no time
    regions: list[str] = field(default_factory=list)  # layout=uav_visloc: region folders; empty = all
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.mode is None:
            self.mode = default_mode(self.layout)


@dataclass
class BackboneConfig:
    name: str = "dinov3_vith16plus"  # any of the seven DINOv3 variants, or vgg16
    weights: str | None = None  # HF folder or Meta .pth; None = random init (demo and tests only)
    # DINOv3: block indices from 0; vgg16: layer names (conv5_3 for CVFT, any convN_M or poolN)
    layers: list[int | str] = field(default_factory=lambda: [26, 28])
    facet: str = _choices("token", "query", "key", "value", default="token")
    seed: int = 0  # random-init seed
    # architecture overrides: DINOv3 variant fields for random-init models (demo); vgg16: {pool: ceil|floor}
    arch: dict = field(default_factory=dict)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each rank's local GPU)
    dtype: str = _choices("auto", "float32", "bfloat16", default="auto")
    compile: bool = False  # torch.compile the backbone (worth it on GPU for long runs)

    def __post_init__(self) -> None:
        # YAML reads `{depth:3}` (no space after the colon) as one key "depth:3" with no value.
        for k, v in self.arch.items():
            if isinstance(k, str) and ":" in k and v is None:
                name, _, value = k.partition(":")
                raise UserError(
                    f"backbone.arch key {k!r} has no value: YAML needs a space after the colon; write "
                    f"{{{name.strip()}: {value.strip()}}} instead of {{{k}}}"
                )


@dataclass
class PreprocessConfig:
    resize: int | list[int] | None = None  # None = native size (GeoAlign: 512×512 as shipped); N or [h, w]
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # default: `resize` with bicubic; cvft: per-view CVFT sizes (ground 112×616, aerial 256×256), area resize
    recipe: str = _choices("default", "cvft", default="default")
    resize_by_view: dict = field(default_factory=dict)  # {view: N or [h, w]}: overrides resize per view
    # meanstd: RGB/255, (x-mean)/std; caffe_bgr: BGR 0..255 minus CVFT's means (Caffe-converted VGG16)
    normalization: str = _choices("meanstd", "caffe_bgr", default="meanstd")


@dataclass
class PoolingConfig:
    # none: no pooling, spatial maps per image (vgg16 only: [512, h, w] for CVFT)
    name: str = _choices("gem", "avg", "max", "cls", "none", default="gem")
    p: float = 3.0
    eps: float = 1e-6
    local_norm: bool = True  # L2-normalize each patch token before pooling (GeoAlign does, for every method)
    use_cls: bool = False  # pool the CLS token with the patch tokens (GeoAlign's --use_cls, for facets)


@dataclass
class ExtractConfig:
    alias: str | None = None  # default: the config's name
    batch_size: int | str = 16  # or auto: the largest that fits and still speeds up (CUDA; 16 on CPU)
    max_batch_size: int = 512  # ceiling of the batch_size=auto search
    num_workers: int = 2  # decoding processes (each decodes batches ahead of the backbone)
    shard_rows: int = 8192
    dtype: str = _choices("float16", "float32", default="float16")
    skip_bad: bool = False  # corrupt images are left out and listed in the manifest (extra.skipped)
    launcher: str = _choices("none", "torchrun", default="none")  # torchrun: spawn nproc ranks
    nproc: int = 0  # ranks for launcher=torchrun; 0 = one per visible GPU (1 on a CPU-only machine)

    def __post_init__(self) -> None:
        # `int | str` would accept any word; only the one keyword is meant.
        if isinstance(self.batch_size, str) and self.batch_size != "auto":
            raise UserError(
                f"extract.batch_size must be an integer or auto, got {self.batch_size!r}; e.g. extract.batch_size=32"
            )


@dataclass
class AlignConfig:
    # a registered alignment method (align/methods/): identity, isms, geoalign, fusion, emcvgl, supervised,
    # cvft, vgg_conv, vgg_gp; checked with align.params by align.registry.check_config once the config loads
    method: str = "isms"
    # Entries to align: one alias per layer, in layer order; empty = the extraction's (one per
    # backbone.layers). Given explicitly, their number is the number of layers: backbone.layers names
    # them when it has as many entries, else they are layers 0, 1, … (align.stream1_layer, align.layers).
    query: list[str] = field(default_factory=list)
    gallery: list[str] = field(default_factory=list)
    # Entries to train on, by branch (same form: one alias per layer); empty = train on the
    # query/gallery entries themselves (transductive). GeoAlign trains on University-1652's train
    # split and evaluates on test. The drone branch carries the MoE adapter (ground views in CVUSA).
    train_drone: list[str] = field(default_factory=list)
    train_satellite: list[str] = field(default_factory=list)
    alias: str | None = None  # output aliases: <alias>.<view>; default <name>.<method>
    device: str = "auto"
    # training compute dtype; auto = bfloat16 on CUDA and on CPUs with AMX/AVX512-BF16, else float32
    # (part of the aligned entries' key when it resolves to bfloat16)
    dtype: str = _choices("auto", "float32", "bfloat16", default="auto")
    fusion: bool = True  # geoalign release: fuse stream 1 with ISMS
    stream1_layer: int | None = None  # the one layer a one-layer method reads; default: the last of backbone.layers
    layers: list[int] = field(default_factory=list)  # the layers a several-layer method (ISMS) stacks; empty: all
    # method hyperparameters: fields of the method's parameter dataclass (Stream1Config, EMCVGLConfig,
    # CVFTConfig; ISMS's under align.params.isms); one config may hold several methods' (a sweep over
    # align.method): each method takes its own, and a key no method takes is refused when the config loads
    params: dict = field(default_factory=dict)


@dataclass
class LocateConfig:
    """Where each frame was taken (``protocol=map``): see retrieve/locate.py and retrieve/sequences.py."""

    method: str = _choices("top1", "weighted", default="top1")  # best tile's centre | softmax-weighted mean
    k: int = 5  # tiles averaged by method=weighted, and the candidates per frame of sequence=hmm
    temperature: float = 0.02  # softmax temperature on the cosine scores (weighted, and hmm's emissions)
    sequence: str = _choices("none", "hmm", default="none")  # hmm: Viterbi over each flight's frames
    max_speed_mps: float = 30.0  # hmm's motion prior: reach per second between consecutive frames

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UserError(f"retrieve.locate.k must be a positive integer, got {self.k}")
        if not self.temperature > 0:
            raise UserError(f"retrieve.locate.temperature must be a positive number, got {self.temperature}; e.g. 0.02")
        if not self.max_speed_mps > 0:
            raise UserError(f"retrieve.locate.max_speed_mps must be a positive number, got {self.max_speed_mps}; e.g. 30")


INDEXES = ("flat", "ivf_flat", "ivf_pq", "hnsw")
RERANKS = ("none", "k_reciprocal")


@dataclass
class RetrieveConfig:
    """Retrieval: metrics are always exact; ``index`` only chooses what serves each query's top-K list."""

    query: str | None = None
    gallery: str | None = None
    protocol: str = _choices(*PROTOCOLS, default="u1652")
    ks: list[int] = field(default_factory=list)  # empty: R@1/5/10 (vpr: R@1/5/10/20, as VPR-methods-evaluation)
    # cosine: inner product of L2-normalized rows; l2: Euclidean distance on the rows as stored (VPR code)
    metric: str = _choices("cosine", "l2", default="cosine")
    positive_radius_m: float = 25.0  # protocol=vpr: gallery items within this many metres are positives
    topk: int | None = None  # top-K list length; None = 10, or the gallery size if smaller; larger = error
    device: str = "auto"
    # flat: exact top-K from the metrics pass; ivf_flat | ivf_pq | hnsw: a FAISS index, cached per gallery
    index: str = _choices(*INDEXES, default="flat")
    nlist: int = 0  # IVF cells; 0 = auto: 4·sqrt(N), at most N/39
    nprobe: int = 32  # IVF cells searched per query (search time: not part of the index cache key)
    pq_m: int = 0  # IVF-PQ sub-quantizers; 0 = auto: the largest divisor of dim that is <= dim/4
    pq_nbits: int = 8  # bits per sub-quantizer code
    refine: int = 0  # IVF-PQ: re-score refine·K candidates exactly (vectors kept in the index); 0 = off
    hnsw_m: int = 32  # HNSW graph degree (M)
    ef_construction: int = 200  # HNSW efConstruction
    ef_search: int = 128  # HNSW efSearch (search time)
    train_size: int = 0  # IVF training rows drawn across shards; 0 = auto: min(N, 64·max(nlist, 2^pq_nbits))
    rebuild_index: bool = False  # rebuild a cached index whose gallery entry changed (default: refuse)
    rerank: str = _choices(*RERANKS, default="none")  # k_reciprocal: Zhong et al. CVPR'17
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    rerank_max_items: int = 12_000  # queries + gallery; re-ranking holds a few (q+g)^2 float32 matrices
    report: bool = True  # recall@K curve (recall_curve.png) and report.html with thumbnails
    report_queries: int = 40  # queries shown in report.html (half the worst, half at random)
    thumb_size: int = 112  # thumbnail side in pixels
    # what report.html, metrics.json and `run` compare with: raw (the alignment's raw input descriptors,
    # i.e. align.method=identity on the same entries) | none | a run folder (its per_query.csv)
    baseline: str = "raw"
    # University-160k submission: top-10 gallery ids per query, tab-separated (relative = in the run folder)
    answer: str | None = None
    answer_order: str | None = None  # the challenge's query_drone_name.txt; None = the query entry's order
    answer_overwrite: bool = False  # let retrieve.answer replace an existing file (default: a new file only)
    # one query per location: the mean of its L2-normalized views, re-normalized (University-1652 --multi)
    multi_query: bool = False
    geo: bool = False  # GPS metrics (SDM@K, MA@<m>m, metres to the top-1) from dataset positions
    sdm_scale: float = 5000.0  # SDM@K decay s in exp(-s * degrees) (DenseUAV; GTA-UAV uses another)
    ma_metres: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0, 50.0, 100.0])  # MA@<m>m
    locate: LocateConfig = field(default_factory=LocateConfig)  # protocol=map: estimated positions

    def __post_init__(self) -> None:
        if not self.ks:
            self.ks = list(DEFAULT_KS.get(self.protocol, [1, 5, 10]))
        if not self.positive_radius_m > 0:
            raise UserError(
                f"retrieve.positive_radius_m must be a positive distance in metres, got {self.positive_radius_m}; e.g. 25"
            )
        positive = {
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "k1": self.k1,
            "k2": self.k2,
            "rerank_max_items": self.rerank_max_items,
            "thumb_size": self.thumb_size,
        }
        if self.topk is not None:
            positive["topk"] = self.topk
        non_negative = {
            "nlist": self.nlist,
            "pq_m": self.pq_m,
            "refine": self.refine,
            "train_size": self.train_size,
            "report_queries": self.report_queries,
        }
        for name, v in positive.items():
            if v < 1:
                raise UserError(f"retrieve.{name} must be a positive integer, got {v}")
        for name, v in non_negative.items():
            if v < 0:
                raise UserError(f"retrieve.{name} must be 0 (auto/off) or a positive integer, got {v}")
        if not 1 <= self.pq_nbits <= 16:
            raise UserError(f"retrieve.pq_nbits must be between 1 and 16, got {self.pq_nbits}")
        if not self.sdm_scale > 0:
            raise UserError(f"retrieve.sdm_scale must be a positive number, got {self.sdm_scale}; e.g. 5000")
        if not self.ma_metres or any(not m > 0 for m in self.ma_metres):
            raise UserError(f"retrieve.ma_metres must be a non-empty list of positive distances, got {self.ma_metres}")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise UserError(f"retrieve.lambda_value must be between 0 and 1, got {self.lambda_value}")


@dataclass
class SweepConfig:
    """``pipeline sweep``: a grid of overrides, each point an ordinary run (see orchestration/sweep_spec.py).

    ``grid`` and ``zip`` map a config field (``align.method``, ``align.params.lr``, ``seed`` …) to a list of
    values; nested mappings are read as dotted paths. Other commands ignore this section.
    """

    grid: dict = field(default_factory=dict)  # cartesian product of these axes
    zip: dict = field(default_factory=dict)  # these axes vary together (same length)
    n_jobs: int = 0  # points run at once; 0 = one per CPU core (torch threads per point = cores / n_jobs)
    backend: str = _choices("loky", "dask", default="loky")  # dask: an existing cluster, or a LocalCluster
    scheduler: str | None = None  # dask scheduler address (tcp://host:8786); None = a LocalCluster
    timeout: float = 10.0  # seconds to wait for the dask scheduler before giving up


@dataclass
class Config:
    name: str = "experiment"
    seed: int = 0
    out: str | None = None  # run folder; default runs/<stage>-<timestamp>
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


SHORTHANDS = {
    "query": "retrieve.query",
    "gallery": "retrieve.gallery",
    "protocol": "retrieve.protocol",
    "root": "dataset.root",
    "mode": "dataset.mode",
    "model": "dataset.model",
    "layout": "dataset.layout",
    "fusion": "align.fusion",
    "method": "align.method",
    "alias": "extract.alias",
    "weights": "backbone.weights",
    "layers": "backbone.layers",
}


# -- conversion ---------------------------------------------------------------------------------
def _closest(name: str, options: list[str], prefix: str = "") -> str:
    hit = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    full = [f"{prefix}.{o}" if prefix else o for o in (hit or options)]
    return f"; did you mean {full[0]!r}?" if hit else f"; valid keys: {', '.join(full)}"


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping of keys, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {value!r}")
        return [_convert(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UserError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{where} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad values raise UserError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        path = f"{where}.{k}" if where else str(k)
        if k not in fields:
            raise UserError(f"unknown config key {path!r}{_closest(str(k), list(fields), where)}")
        val = _convert(v, hints[k], path)
        choices = fields[k].metadata.get("choices")
        if choices and val not in choices:
            close = difflib.get_close_matches(str(val), [str(c) for c in choices], n=1)
            hint = f"; did you mean {path}={close[0]}?" if close else ""
            raise UserError(f"{path}={val!r} is not one of {', '.join(map(str, choices))}{hint}")
        kwargs[k] = val
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(data: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    cls: Any = Config
    for i, p in enumerate(parts[:-1]):
        names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        if dataclasses.is_dataclass(cls) and p not in names:
            raise UserError(
                f"unknown config key {'.'.join(parts[: i + 1])!r}{_closest(p, names, '.'.join(parts[:i]))}"
            )
        cls = typing.get_type_hints(cls).get(p) if dataclasses.is_dataclass(cls) else None
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"{'.'.join(parts[: i + 1])} is not a section; cannot set {path}")
    node[parts[-1]] = value


def split_override(
    item: str,
    *,
    what: str = "override",
    form: str = "section.field=value",
    example: str = "align.method=isms",
) -> tuple[str, str]:
    """``KEY=VALUE`` → (``KEY`` stripped, ``VALUE`` as given): the one split of every ``k=v`` argument.

    Only the first ``=`` splits, so values may hold ``=``. An item without ``=`` or without a key is a
    one-line :class:`UserError` that names it as ``what`` (e.g. ``--grid``), shows the expected
    ``form`` and an ``example``. Short names (:data:`SHORTHANDS`) are left to the caller.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"{what} {item!r} is not of the form {form}; e.g. {example}")
    return key, text


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``section.field=value`` strings → (dotted path, YAML-parsed value)."""
    out = []
    for item in items:
        k, v = split_override(item)
        k = SHORTHANDS.get(k, k)
        try:
            val = load_yaml(v, f"override {item[:60]!r}") if v.strip() else None
        except yaml.YAMLError:
            val = v
        except YAMLBoundError as e:
            raise UserError(str(e)) from None
        out.append((k, val))
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (a file, or the name of a shipped one), apply overrides, validate."""
    from cvgl.configs import resolve_config_path

    data: dict = {}
    if path is not None:
        try:
            p = resolve_config_path(path)
        except UserError:
            # A shipped name wins over a folder of the same name; any other folder is named as one.
            if Path(path).is_dir():
                raise UserError(
                    f"config {path} is a directory; give a YAML file inside it or a shipped config name"
                ) from None
            raise
        try:
            loaded = load_yaml(p.read_text(encoding="utf-8"), f"config {p}")
        except YAMLBoundError as e:
            raise UserError(str(e)) from None
        except yaml.YAMLError as e:
            raise UserError(f"config {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        except UnicodeDecodeError:
            raise UserError(f"config {p} is not UTF-8 text; give a YAML file") from None
        except OSError as e:
            raise UserError(f"config {p} cannot be read ({e.strerror or e}); check its permissions") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"config {p} must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
        data.setdefault("name", p.stem)
    file_old, cli_old = _old_isms_section(data), {}
    if "layers" in file_old:
        data["align"].setdefault("layers", file_old.pop("layers"))
    for k, v in parse_overrides(overrides or []):
        if k == "align.isms" or k.startswith("align.isms."):
            cli_old.update(v if k == "align.isms" and isinstance(v, dict) else {k[len("align.isms.") :]: v})
        else:
            _set_path(data, k, v)
    if file_old or cli_old:
        _read_old_isms_section(data, file_old, cli_old)
    return from_dict(Config, data)


def _old_isms_section(data: dict) -> dict:
    align = data.get("align")
    old = align.pop("isms", None) if isinstance(align, dict) else None
    if old is not None and not isinstance(old, dict):
        raise UserError(f"align.isms must be a mapping of keys, got {old!r}; write align.params.isms instead")
    return dict(old or {})


def _read_old_isms_section(data: dict, file_old: dict, cli_old: dict) -> None:
    """Read the old ``align.isms`` section as it is written now, with a one-line deprecation warning:
    its ``layers`` as ``align.layers``, the rest as ``align.params.isms`` (ISMS's hyperparameters).
    As before, the section is apart from ``align.params``: replacing ``align.params`` keeps it. A
    file's old section gives way to what the file or an override sets the new way; old-style
    overrides win."""
    warnings.warn(
        "align.isms is deprecated: write its layers as align.layers and the rest as align.params.isms "
        "(e.g. align.params.isms.out_dim=256)",
        FutureWarning,
        stacklevel=3,
    )
    align = data.setdefault("align", {})
    if "layers" in cli_old:
        align["layers"] = cli_old.pop("layers")
    params = align.setdefault("params", {})
    if not isinstance(params, dict):
        raise UserError(f"align.params must be a mapping, got {params!r}")
    section = params.get("isms") or {}
    if not isinstance(section, dict):
        raise UserError(f"align.params.isms must be a mapping of keys, got {section!r}")
    params["isms"] = {**file_old, **section, **cli_old}
