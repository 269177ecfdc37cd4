"""Decode, convert, resize and normalize images for the backbones (Pillow + numpy/torch only).

torchvision is not usable here, so this module reproduces what its ``Resize`` (on PIL images),
``ToTensor`` and ``Normalize`` do, in the same order and float32 arithmetic, so descriptors match the
reference pipelines that used them.

EXIF orientation tags are deliberately not applied: the reference pipelines (``Image.open(...)
.convert("RGB")``) do not apply them either, and descriptors must match theirs.

Everything here must survive DataLoader worker processes: the dataset holds only the (picklable)
:class:`~extract.datasets.ImageList` and a few numbers, and opens each file only for the duration of
one ``__getitem__``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from cvgl.core.errors import UserError
from cvgl.datasets.layouts import ImageList, display_name, name_problem
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Modes whose samples are wider than 8 bits. Pillow's own convert("RGB") clips them at 255, which
# turns almost any 16-bit image white, so we rescale them ourselves. Range assumed per mode:
# 16-bit ints span 0..65535 (that is what PNG/TIFF store); "I" is how older Pillows open 16-bit PNGs,
# so it gets the same range; "F" is taken as 0..1, the usual convention for float images.
_HIGH_DEPTH_RANGE: dict[str, float] = {
    "I;16": 65535.0,
    "I;16L": 65535.0,
    "I;16B": 65535.0,
    "I;16N": 65535.0,
    "I": 65535.0,
    "F": 1.0,
}

Size = tuple[int, int]

#: Resampling filters by name: ``bicubic`` is torchvision's Resize on PIL images; ``box`` is area
#: averaging, what OpenCV's INTER_AREA (CVFT's loaders) computes when shrinking.
RESAMPLE: dict[str, Image.Resampling] = {"bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX}
#: ``meanstd``: RGB in [0, 1], then (x - mean) / std (torchvision-format weights, DINOv3).
#: ``caffe_bgr``: BGR in 0..255 minus CVFT's BGR means (the Caffe-converted VGG16 CVFT started from).
NORMALIZATIONS: tuple[str, ...] = ("meanstd", "caffe_bgr")


def parse_resize(resize: int | Sequence[int] | None) -> Size | None:
    """Normalize a resize setting to ``(height, width)``; None keeps each image's native size."""
    if resize is None:
        return None
    if isinstance(resize, bool):  # bool is an int subclass; resize=True is certainly a mistake
        raise UserError(
            f"preprocess.resize={resize!r} is not a size; use an integer like 512, [h, w] or null"
        )
    if isinstance(resize, (int, np.integer)):
        h = w = int(resize)
    elif isinstance(resize, Sequence) and not isinstance(resize, str) and len(resize) == 2:
        try:
            h, w = (int(v) for v in resize)
        except (TypeError, ValueError):
            raise UserError(
                f"preprocess.resize={list(resize)!r} is not a size; use an integer like 512 or [h, w]"
            ) from None
    else:
        raise UserError(
            f"preprocess.resize={resize!r} is not a size; use an integer like 512, [h, w] or null"
        )
    if h <= 0 or w <= 0:
        raise UserError(f"preprocess.resize={resize!r} must be positive; use e.g. preprocess.resize=512")
    return h, w


def _parse_stat(name: str, value: Sequence[float] | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        default = list(IMAGENET_MEAN if name == "mean" else IMAGENET_STD)
        raise UserError(
            f"preprocess.{name} needs 3 values (R, G, B), got {len(vals)}; e.g. preprocess.{name}={default}"
        )
    if name == "std" and any(v <= 0 for v in vals):
        raise UserError(
            f"preprocess.std={list(vals)} must be positive; e.g. preprocess.std={list(IMAGENET_STD)}"
        )
    return vals  # type: ignore[return-value]


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    Alpha is dropped (not composited), as ``Image.convert("RGB")`` and the reference pipelines do;
    palette images with transparency go through RGBA to avoid Pillow's transparency warning; wide
    sample modes are rescaled to 0..255 instead of clipped.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _HIGH_DEPTH_RANGE:
        arr = np.asarray(im).astype(np.float64)
        arr = np.clip(arr / _HIGH_DEPTH_RANGE[mode], 0.0, 1.0) * 255.0
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        return im.convert("RGBA").convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        # Rare premultiplied modes (La, RGBa) have no direct path; their straight-alpha twin does.
        return im.convert("RGBA").convert("RGB")


def load_rgb(path: str, display_name: str) -> Image.Image:
    """Open, fully decode and convert one image to RGB; any decoding failure becomes a UserError.

    ``im.load()`` forces the whole file to be decoded now: Image.open only reads the header, and a
    truncated file would otherwise be discovered (or with LOAD_TRUNCATED_IMAGES silently padded) later.
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im)
            # convert() may return the same lazily-backed object for RGB input; copy detaches it from
            # the file so nothing stays open after the with-block.
            rgb = rgb.copy() if rgb is im else rgb
    except Exception as exc:  # Pillow signals bad data with OSError, SyntaxError, ValueError, struct.error...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"cannot decode image {display_name} ({reason}); fix or remove the file, "
            "or pass --skip-bad (extract.skip_bad=true)"
        ) from None
    return rgb


def to_tensor(
    rgb: Image.Image,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> torch.Tensor:
    """HxWx3 uint8 RGB -> float32 [3, H, W] in [0, 1], then (x - mean) / std per channel.

    Same operations and order as torchvision's ToTensor + Normalize, hence bit-identical results.
    """
    arr = np.array(rgb, dtype=np.uint8, copy=True)
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
        s = torch.as_tensor(std, dtype=torch.float32)[:, None, None]
        t.sub_(m).div_(s)
    return t


class ImageDataset(Dataset):
    """Decoded, resized and normalized images of an :class:`ImageList`, in list order.

    ``dataset[i]`` is ``(i, tensor)`` with a float32 tensor ``[3, H, W]``. The index travels with the
    image so the extractor can write each descriptor to its row whatever order batches arrive in.

    Args:
        images: the list to read.
        resize: None keeps native sizes; an int gives size x size; ``(h, w)`` gives h x w. Bicubic with
            Pillow's antialiasing (what torchvision's Resize does on PIL images).
        mean, std: per-channel normalization after scaling to [0, 1]; None for both skips it.
        skip_bad: when True a corrupt image gives ``(i, None)`` instead of raising; :func:`collate`
            drops such items, so the missing indices tell the caller which images were skipped.
        resample: ``bicubic`` (default) or ``box`` (area averaging, CVFT's recipe).
        normalization: ``meanstd`` (uses ``mean``/``std``) or ``caffe_bgr`` (CVFT's Caffe convention,
            :func:`extract.vgg16.preprocess`; ``mean``/``std`` are ignored).
    """

    def __init__(
        self,
        images: ImageList,
        *,
        resize: int | Sequence[int] | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        skip_bad: bool = False,
        resample: str = "bicubic",
        normalization: str = "meanstd",
    ) -> None:
        if (mean is None) != (std is None):
            raise UserError("set both preprocess.mean and preprocess.std, or neither")
        if resample not in RESAMPLE:
            raise UserError(f"unknown resampling {resample!r}; use one of {', '.join(RESAMPLE)}")
        if normalization not in NORMALIZATIONS:
            raise UserError(
                f"unknown preprocess.normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}"
            )
        self.images = images
        self.size = parse_resize(resize)
        self.mean = _parse_stat("mean", mean)
        self.std = _parse_stat("std", std)
        self.skip_bad = skip_bad
        self.resample = resample
        self.normalization = normalization

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` as a normalized float32 tensor [3, H, W]; raises UserError if it cannot be read,
        or if its name could not be stored as a name (see :func:`~extract.datasets.name_problem`)."""
        name = self.images.names[i]
        problem = name_problem(name)
        if problem is not None:
            # Refused like an undecodable image, so --skip-bad leaves it out and lists it.
            raise UserError(
                f"image file name {display_name(name)} {problem}, so it could not be stored and read back "
                "as a name; rename the file, or pass --skip-bad (extract.skip_bad=true)"
            )
        if self.images.tiles is not None:
            rgb = self.images.tiles.read_rgb(i)
        else:
            rgb = load_rgb(str(self.images.path(i)), name)
        if self.size is not None:
            h, w = self.size
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), RESAMPLE[self.resample])
        if self.normalization == "caffe_bgr":
            from cvgl.extract.vgg16 import preprocess

            return preprocess(np.asarray(rgb), "cvft")[0]
        return to_tensor(rgb, self.mean, self.std)

    def output_size(self, i: int) -> Size | None:
        """The ``(h, w)`` of the tensor :meth:`load` gives for image ``i``, without decoding its pixels.

        The same rule as :meth:`load`: the resize target when one is set, else the native size, which
        Pillow reads from the file header (``load`` applies no EXIF rotation, so neither does this).
        None when the header cannot be read: :meth:`load` will then refuse or skip the image anyway.
        """
        if self.size is not None:
            return self.size
        if self.images.tiles is not None:
            return self.images.tiles.px, self.images.tiles.px
        try:
            with Image.open(self.images.path(i)) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - Pillow signals bad headers with many types; load() reports it
            return None
        return int(h), int(w)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        i = int(i)
        if not 0 <= i < len(self.images):
            raise IndexError(i)
        if not self.skip_bad:
            return i, self.load(i)
        try:
            return i, self.load(i)
        except UserError:
            return i, None


def collate(batch: Sequence[tuple[int, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack ``(i, image)`` items into ``(indices int64 [B], images float32 [B, 3, H, W])``.

    Items whose image is None (skipped bad images) are dropped; if all are, images is None. Images of
    different sizes cannot be stacked: that is a configuration problem (native sizes differ), so it is
    reported as a UserError that says how to fix it.
    """
    kept = [(i, t) for i, t in batch if t is not None]
    indices = torch.tensor([i for i, _ in kept], dtype=torch.int64)
    if not kept:
        return indices, None
    first = kept[0][1]
    for _, t in kept[1:]:
        if t.shape != first.shape:
            a = f"{first.shape[-2]}x{first.shape[-1]}"
            b = f"{t.shape[-2]}x{t.shape[-1]}"
            raise UserError(f"images have different sizes ({a} vs {b}); set preprocess.resize=N")
    return indices, torch.stack([t for _, t in kept])


_WORKER_MSG = re.compile(r"UserError: (.*)$", re.MULTILINE)


def _one_line(exc: UserError) -> str:
    """The original one-line message of a UserError re-raised from a DataLoader worker.

    torch re-raises worker exceptions as ``type(exc)(traceback_text)``, so the message a user would see
    becomes a multi-line traceback; the original message is on the last ``...UserError: `` line.
    """
    text = str(exc)
    if "\n" not in text:
        return text
    found = _WORKER_MSG.findall(text)
    return found[-1] if found else text.strip().splitlines()[-1]


def iter_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    batches: Sequence[Sequence[int]] | None = None,
    prefetch_factor: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield collated batches in list order, with UserErrors from workers kept to one line.

    Order is deterministic (no shuffling) whatever ``num_workers`` is, so extraction results do not
    depend on the worker count. ``batches`` gives the exact index lists to load (the extractor's
    shard-aligned batches; ``batch_size`` is then ignored). Workers decode ``prefetch_factor`` batches
    each ahead of the consumer, so decoding overlaps the forward pass and memory stays bounded.
    """
    if batches is None and batch_size <= 0:
        raise UserError(f"batch size {batch_size} must be positive; e.g. extract.batch_size=32")
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    if batches is not None:
        loader = DataLoader(
            dataset,
            batch_sampler=[list(b) for b in batches],
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            **extra,
        )
    else:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            **extra,
        )
    try:
        yield from loader
    except UserError as exc:
        raise UserError(_one_line(exc)) from None
