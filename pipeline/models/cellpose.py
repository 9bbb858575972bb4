"""Family `cellpose`: cellpose's network, CPnet, with its pretrained weights and its preprocessing;
the maps, losses, TTA, fold ensembles and masks of flow_unet (pipeline.models.flow_maps).

The network is this project's own module with cellpose 3.x's state-dict names (`downsample.*`,
`upsample.*`, `output.*`, the `diam_mean` / `diam_labels` buffers), so cellpose's model files load
unchanged, and scellseg's copy of them (`cellpipe fetch-weights cellpose`) through its key map
(pipeline.models.foreign_weights). CPnet: residual blocks of four 3x3 convolutions (each batch
norm, ReLU, convolution) down `channels`, a style vector (the deepest features' mean, unit
length) added before every 3x3 convolution of the up blocks but their first, skips added, and a
1x1 output (dy, dx, cell logit). Class logits come from a 1x1 convolution of our own beside it,
on the same normalised features: the rows the output would gain for the classes, kept apart so
that the pretrained rows survive a change of classes (`class_heads`).

Preprocessing as cellpose's: a grey image scaled so that its 1st / 99th percentiles are 0 / 1
(inverted as `model.cellpose.invert` says: cellpose's `invert`, or `auto` per image), as channel
0, zeros as channel 1 (the nuclei channel the model files expect); images sized so that cells are
`diam_mean` px wide (`model.cellpose.size`); overlapping tiles of `tile` px, blended.

Exemplars: up to EXEMPLARS training images kept as buffers with their labels' polarity and median
cell diameter; their styles (cellpose's image descriptor) are the network's of the moment, so
fine-tuned weights compare with themselves. `invert: auto` learns polarity from the labels: a
training crop is inverted where its cells are darker than the rest, a test image as its nearest
exemplar by style is (fold models vote); `size: exemplar` takes that exemplar's diameter, as
cellpose's size model regresses sizes from the style, and `exemplar_first_pass` refines it by a
first pass, as cellpose's size model does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import CellposeConfig
from pipeline.core.errors import CellpipeError
from pipeline.core.instances import label_image_diameter
from pipeline.models.base import TrainingImages, register
from pipeline.models.flow_maps import (
    FlowFamily,
    flow_losses,
    maps_labels,
    mean_maps,
    normalise,
    pad_to,
    padded_size,
)
from pipeline.models.foreign_weights import cellpose_names, is_cellpose, needed_overrides

IN_CHANNELS = 2  # the cell signal, and a nuclei channel (zeros here)
TILE_BATCH = 8  # tiles per network call at inference
# cellpose's outputs (dy, dx, cell logit) to this project's map order (cell logit, dy, dx)
TO_MAPS = [2, 0, 1]
# `invert: auto`: training images kept to tell test images' polarity, each its central px at the
# test-time first scale (grey, 8-bit: at most 4 MB of the checkpoint)
EXEMPLARS = 16
EXEMPLAR_SIZE = 512


def _norm_relu_conv(c_in: int, c_out: int, size: int) -> nn.Sequential:
    """Batch norm, ReLU, convolution (cellpose's `batchconv`: keys .0 and .2)."""
    return nn.Sequential(
        nn.BatchNorm2d(c_in, eps=1e-5, momentum=0.05),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, size, padding=size // 2),
    )


def _norm_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Batch norm, 1x1 convolution (cellpose's `batchconv0`, a block's projection)."""
    return nn.Sequential(nn.BatchNorm2d(c_in, eps=1e-5, momentum=0.05), nn.Conv2d(c_in, c_out, 1))


class DownBlock(nn.Module):
    """Two residual pairs of 3x3 convolutions; the first pair's shortcut projected to c_out."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = _norm_conv(c_in, c_out)
        self.conv = nn.ModuleDict(
            {f"conv_{t}": _norm_relu_conv(c_in if t == 0 else c_out, c_out, 3) for t in range(4)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = self.proj(x) + c["conv_1"](c["conv_0"](x))
        return x + c["conv_3"](c["conv_2"](x))


class StyledConv(nn.Module):
    """A 3x3 convolution block whose input gets the style vector, mapped to its channels."""

    def __init__(self, channels: int, style_channels: int):
        super().__init__()
        self.conv = _norm_relu_conv(channels, channels, 3)
        self.full = nn.Linear(style_channels, channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.conv(x + self.full(style)[:, :, None, None])


class UpBlock(nn.Module):
    """A 3x3 convolution to c_out plus the skip, then three styled ones, in two residual pairs."""

    def __init__(self, c_in: int, c_out: int, style_channels: int):
        super().__init__()
        self.conv = nn.ModuleDict(
            {
                "conv_0": _norm_relu_conv(c_in, c_out, 3),
                **{f"conv_{t}": StyledConv(c_out, style_channels) for t in (1, 2, 3)},
            }
        )
        self.proj = _norm_conv(c_in, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = self.proj(x) + c["conv_1"](c["conv_0"](x) + skip, style)
        return x + c["conv_3"](c["conv_2"](x, style), style)


class Encoder(nn.Module):
    """Down blocks from the input channels through `widths`, a 2x max pool before each but the
    first (cellpose's `downsample`)."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        ins = [IN_CHANNELS, *widths[:-1]]
        self.down = nn.ModuleDict(
            {f"res_down_{n}": DownBlock(c_in, c) for n, (c_in, c) in enumerate(zip(ins, widths))}
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for block in self.down.values():
            features.append(block(F.max_pool2d(features[-1], 2) if features else x))
        return features


class Decoder(nn.Module):
    """Up blocks from the deepest level (which keeps its width) to the finest, each after a 2x
    nearest upsampling but the first (cellpose's `upsample`)."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        ins = [*widths[1:], widths[-1]]
        self.up = nn.ModuleDict(
            {
                f"res_up_{n}": UpBlock(c_in, c, widths[-1])
                for n, (c_in, c) in enumerate(zip(ins, widths))
            }
        )

    def forward(self, features: list[torch.Tensor], style: torch.Tensor) -> torch.Tensor:
        blocks = list(self.up.values())
        x = blocks[-1](features[-1], features[-1], style)
        for block, skip in zip(reversed(blocks[:-1]), reversed(features[:-1])):
            x = block(F.interpolate(x, scale_factor=2, mode="nearest"), skip, style)
        return x


def style_vector(features: torch.Tensor) -> torch.Tensor:
    """(B, C) unit-length mean of the deepest features (cellpose's `make_style`)."""
    style = features.mean(dim=(-2, -1))
    return style / style.pow(2).sum(dim=1, keepdim=True).sqrt()


class CPNet(nn.Module):
    """cellpose's CPnet with `n_classes` class logits beside its outputs: (B, 3 + C, H, W) as
    (dy, dx, cell logit, class logits...), H and W divisible by `stride`."""

    def __init__(self, widths: Sequence[int], n_classes: int, diam_mean: float):
        super().__init__()
        self.downsample = Encoder(widths)
        self.upsample = Decoder(widths)
        self.output = _norm_relu_conv(widths[0], 3, 1)
        self.classes = nn.Conv2d(widths[0], n_classes, 1)
        self.register_buffer("diam_mean", torch.full((1,), float(diam_mean)))
        self.register_buffer("diam_labels", torch.full((1,), float(diam_mean)))
        self.to(memory_format=torch.channels_last)  # 2-3x faster convolutions on the CPU

    @property
    def stride(self) -> int:
        return 2 ** (len(self.downsample.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.downsample(x)
        x = self.upsample(features, style_vector(features[-1]))
        hidden = self.output[1](self.output[0](x))
        return torch.cat([self.output[2](hidden), self.classes(hidden)], dim=1)


def skewness(grey: torch.Tensor) -> torch.Tensor:
    """(B,) skewness of each image's grey levels: > 0 where a few pixels are far brighter than
    most (fluorescence), < 0 where they are far darker (phase contrast, bright field)."""
    flat = grey.flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    spread = centred.pow(2).mean(dim=1).sqrt().clamp_min(1e-6)
    return centred.pow(3).mean(dim=1) / spread**3


def cells_darker(grey: torch.Tensor, cells: torch.Tensor) -> bool | None:
    """Whether the pixels of `cells` (a boolean mask of grey's shape) are darker on average than
    the others; None where there are no cells or nothing else."""
    if cells.all() or not cells.any():
        return None
    return bool(grey[cells].mean() < grey[~cells].mean())


def cellpose_input(images: torch.Tensor, dark: torch.Tensor | bool = False) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 2, H, W): the grey image at cellpose's percentile
    normalisation, inverted where `dark` ((B,) flags, or one for all) so that cells are bright
    as in the images cellpose's models learnt, and a zero nuclei channel."""
    grey = normalise(images)
    dark = torch.as_tensor(dark, device=grey.device).view(-1, 1, 1, 1)
    grey = torch.where(dark, 1 - grey, grey)
    return torch.cat([grey, torch.zeros_like(grey)], dim=1)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size` x `size` px of x (..., H, W) (all of a side no longer)."""
    height, width = x.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return x[..., top : top + size, left : left + size]


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """First pixels of tiles of `tile` px covering `length` px, evenly spread so that
    neighbours share at least `overlap` of a tile."""
    if length <= tile:
        return [0]
    longest_step = max(1, math.floor(tile * (1 - overlap)))
    count = math.ceil((length - tile) / longest_step) + 1
    return np.linspace(0, length - tile, count).round().astype(int).tolist()


def edge_taper(length: int, overlap: float) -> torch.Tensor:
    """(length,) weights rising linearly from the tile's ends to 1 over its overlap width."""
    ramp = max(1, round(length * overlap))
    index = torch.arange(length)
    return ((torch.minimum(index, length - 1 - index) + 1) / ramp).clamp(max=1)


def run_net(net: CPNet, x: torch.Tensor) -> torch.Tensor:
    """The network on inputs (B, 2, H, W) padded to its stride, cropped back, in map order."""
    height, width = x.shape[-2:]
    x = pad_to(x, *padded_size(height, width, net.stride)).contiguous(
        memory_format=torch.channels_last
    )
    out = net(x)[..., :height, :width]
    return out[:, [*TO_MAPS, *range(3, out.shape[1])]]


def tiled_maps(net: CPNet, x: torch.Tensor, tile: int, overlap: float) -> torch.Tensor:
    """float32 maps (3 + C, H, W) of one input (1, 2, H, W): the network on overlapping tiles of
    `tile` px (the whole input when 0 or no larger), blended by `edge_taper` weights."""
    height, width = x.shape[-2:]
    if not tile or (height <= tile and width <= tile):
        return run_net(net, x)[0].float()
    th, tw = min(tile, height), min(tile, width)
    rows, cols = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    corners = [(y, z) for y in rows for z in cols]
    weight = (edge_taper(th, overlap)[:, None] * edge_taper(tw, overlap)[None]).to(x.device)
    total = x.new_zeros((height, width))
    out = None
    for first in range(0, len(corners), TILE_BATCH):
        chunk = corners[first : first + TILE_BATCH]
        maps = run_net(net, torch.cat([x[..., y : y + th, z : z + tw] for y, z in chunk])).float()
        if out is None:
            out = x.new_zeros((maps.shape[1], height, width))
        for m, (y, z) in zip(maps, chunk):
            out[:, y : y + th, z : z + tw] += m * weight
            total[y : y + th, z : z + tw] += weight
    return out / total


@register
class CellposeModel(FlowFamily):
    """cellpose's CPnet, pretrained weights and preprocessing; masks by following the flows."""

    family = "cellpose"
    config_class = CellposeConfig
    class_heads = ("net.classes.",)

    def __init__(self, cfg: CellposeConfig, classes: Sequence[str], scale: float = 1.0):
        super().__init__(cfg, classes, scale)
        self.net = CPNet(cfg.channels, len(self.classes), cfg.diam_mean)
        # exemplars (`invert: auto`, `size: exemplar`): grey views (`polarity_view`), their
        # sizes (0: empty slot), whether their cells are dark, their median cell diameter; their
        # styles are the network's of the moment
        side = EXEMPLAR_SIZE
        self.register_buffer("exemplars", torch.zeros(EXEMPLARS, side, side, dtype=torch.uint8))
        self.register_buffer("exemplar_sizes", torch.zeros(EXEMPLARS, 2, dtype=torch.int64))
        self.register_buffer("exemplar_dark", torch.zeros(EXEMPLARS, dtype=torch.bool))
        self.register_buffer("exemplar_diameters", torch.zeros(EXEMPLARS))
        self._exemplar_styles: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(CellposeModel._forget_styles)

    def _forget_styles(self, *_) -> None:
        """New weights, new styles: the exemplars' are taken again when next needed."""
        self._exemplar_styles = None

    def train(self, mode: bool = True) -> CellposeModel:
        self._forget_styles()  # training changes the weights
        return super().train(mode)

    @property
    def diameter(self) -> float | None:
        return None if self.cfg.size == "none" else self.cfg.diam_mean

    def zoom(self, diameter: float) -> float:
        """The zoom that takes cells `diameter` px wide to `diam_mean`, within `zoom_range`."""
        low, high = self.cfg.zoom_range
        return float(np.clip(self.cfg.diam_mean / diameter, low, high))

    def first_zoom(self) -> float:
        """The `zoom` of the training labels' median diameter (cellpose's `diam_labels`)."""
        return self.zoom(self.net.diam_labels.item())

    def learn_training_set(self, diameter: float, samples: TrainingImages) -> None:
        """Keeps the diameter as cellpose keeps it (`diam_labels`: the test-time size's start)
        and, as exemplars, up to EXEMPLARS of the images, evenly spread, each with whether its
        labels' cells are darker than the rest and their median diameter (images without cells
        or background skipped)."""
        self.net.diam_labels.fill_(diameter)
        self.exemplar_sizes.zero_()
        picks = np.unique(np.linspace(0, len(samples) - 1, EXEMPLARS).round().astype(int))
        slot = 0
        for index in picks if len(samples) else []:
            sample = samples[int(index)]
            if sample is None:
                continue
            image, labels = sample
            darker = cells_darker(image.mean(dim=0), torch.from_numpy(labels > 0))
            if darker is None:
                continue
            view = (self.polarity_view(image)[0, 0] * 255).round().to(torch.uint8)
            self.exemplars[slot].zero_()
            self.exemplars[slot, : view.shape[0], : view.shape[1]] = view
            self.exemplar_sizes[slot] = torch.tensor(view.shape)
            self.exemplar_dark[slot] = darker
            self.exemplar_diameters[slot] = label_image_diameter(labels)
            slot += 1
        self._exemplar_styles = None

    def polarity_view(self, image: torch.Tensor) -> torch.Tensor:
        """Grey (1, 1, h, w) in [0, 1]: the centre of an image (C, H, W) at `first_zoom`, at most
        EXEMPLAR_SIZE px a side, what exemplars are compared by."""
        grey = image.float().mean(dim=0)[None, None]
        zoom = self.first_zoom()
        grey = centre_crop(grey, math.ceil(EXEMPLAR_SIZE / zoom))
        if zoom != 1.0:
            grey = F.interpolate(grey, scale_factor=zoom, mode="bilinear", antialias=zoom < 1)
        return centre_crop(grey, EXEMPLAR_SIZE).clamp(0, 1)

    @torch.no_grad()
    def style(self, view: torch.Tensor) -> torch.Tensor:
        """The network's style vector (S,) of a grey view (1, 1, h, w), not inverted (under
        `amp`)."""
        x = cellpose_input(view)
        x = pad_to(x, *padded_size(*x.shape[-2:], self.net.stride))
        device = x.device.type
        half = torch.bfloat16 if device == "cpu" else torch.float16
        with torch.autocast(device, dtype=half, enabled=self.cfg.amp):
            return style_vector(self.net.downsample(x)[-1].float())[0]

    def nearest_exemplar(self, image: torch.Tensor) -> tuple[bool, float] | None:
        """Of an image (C, H, W)'s nearest exemplar by style (cosine): whether its cells are
        dark, and their median diameter; None without exemplars."""
        kept = self.exemplar_sizes[:, 0] > 0
        if not kept.any():
            return None
        if self._exemplar_styles is None:
            views = [
                self.exemplars[k, :h, :w].float()[None, None] / 255
                for k, (h, w) in enumerate(self.exemplar_sizes.tolist())
                if h
            ]
            self._exemplar_styles = torch.stack([self.style(v) for v in views])
        nearest = int(torch.argmax(self._exemplar_styles @ self.style(self.polarity_view(image))))
        dark, diameters = self.exemplar_dark[kept], self.exemplar_diameters[kept]
        return bool(dark[nearest]), float(diameters[nearest])

    def cells_dark(self, image: torch.Tensor, nearest: tuple[bool, float] | None) -> bool:
        """Whether an image (C, H, W) is inverted: as `invert` says; `auto`: as its nearest
        exemplar (`nearest_exemplar`) is, or, with none, where its `skewness` is negative."""
        if self.cfg.invert != "auto":
            return self.cfg.invert == "always"
        if nearest is None:
            return bool(skewness(normalise(image[None])[:, 0]) < 0)
        return nearest[0]

    def crop_dark(self, image: torch.Tensor, cells: torch.Tensor) -> bool:
        """Whether a training crop (C, h, w) with its cell mask is inverted: `auto`, where its
        cells are darker than the rest; otherwise (or lacking cells or the rest) as `cells_dark`
        says of an image without exemplars."""
        darker = None
        if self.cfg.invert == "auto":
            darker = cells_darker(normalise(image[None])[0, 0], cells)
        return self.cells_dark(image, None) if darker is None else darker

    def import_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """cellpose's model files (and scellseg's copy) under this model's names; a file made at
        another `diam_mean` is a one-line error naming the override it needs."""
        state = cellpose_names(state)
        if not is_cellpose(state):
            return state
        if "diam_mean" in state:
            made_at = {"diam_mean": float(state["diam_mean"].reshape(-1)[0])}
            needed = needed_overrides(self.cfg, self.family, made_at)
            if needed:
                raise CellpipeError(f"cellpose weights made at another diameter need {needed}")
        return {f"net.{name}": tensor for name, tensor in state.items()}

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Training losses; each crop inverted as `crop_dark` says of it and its labels."""
        dark = [self.crop_dark(im, t["classes"] > 0) for im, t in zip(images, targets)]
        return flow_losses(self.batch_maps(images, dark).float(), images, targets)

    def batch_maps(
        self, images: Sequence[torch.Tensor], dark: Sequence[bool] | None = None
    ) -> torch.Tensor:
        """Each image normalised (cellpose's two channels; inverted where `dark`, by default as
        `invert` says but `auto`), padded to one size."""
        height = max(int(im.shape[-2]) for im in images)
        width = max(int(im.shape[-1]) for im in images)
        if dark is None:
            dark = [self.cfg.invert == "always"] * len(images)
        inputs = (cellpose_input(im[None], d) for im, d in zip(images, dark))
        batch = torch.cat([pad_to(x, height, width) for x in inputs])
        return run_net(self.net, batch)

    @torch.no_grad()
    def image_maps(self, image: torch.Tensor, scale: float) -> torch.Tensor:
        """The image normalised, resized by `scale`, seen in tiles (under `amp`); its maps
        resized back."""
        height, width = (int(s) for s in image.shape[-2:])
        x = cellpose_input(image[None])
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=scale < 1)
        device = x.device.type
        half = torch.bfloat16 if device == "cpu" else torch.float16
        with torch.autocast(device, dtype=half, enabled=self.cfg.amp):
            maps = tiled_maps(self.net, x, self.cfg.tile, self.cfg.tile_overlap)
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps[None], (height, width), mode="bilinear")[0]
            maps[1:3] /= scale  # flows in the image's own pixels
        return maps

    @classmethod
    def image_input(
        cls, models: Sequence[FlowFamily], image: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, float]:
        """The image inverted (1 - image, the same as inverting its percentile normalisation)
        where most of `models` find its cells dark (`cells_dark`: fold models, each by its own
        exemplars, vote), at `image_scale`."""
        cfg = models[0].cfg
        asked = cfg.invert == "auto" or cfg.size.startswith("exemplar")
        told = [model.nearest_exemplar(image) if asked else None for model in models]
        votes = [model.cells_dark(image, nearest) for model, nearest in zip(models, told)]
        shown = 1 - image if 2 * sum(votes) > len(votes) else image
        diameters = [nearest[1] for nearest in told if nearest is not None]
        return shown, cls.image_scale(models, shown, scale, diameters)

    @classmethod
    def image_scale(
        cls,
        models: Sequence[FlowFamily],
        image: torch.Tensor,
        scale: float,
        exemplar_diameters: Sequence[float] = (),
    ) -> float:
        """`scale` times the zoom that makes the cells `diam_mean` wide: judged by the training
        labels' median diameter (`first_zoom`) or (`exemplar`, `exemplar_first_pass`) by the
        median of `exemplar_diameters`, then (`first_pass`, `exemplar_first_pass`) by the masks
        that a first pass at that size finds (one view, the first model: fold models agree on
        sizes); within `zoom_range`."""
        model: CellposeModel = models[0]
        cfg = model.cfg
        if cfg.size == "none":
            return scale
        first = scale * model.first_zoom()
        if cfg.size.startswith("exemplar") and exemplar_diameters:
            first = scale * model.zoom(float(np.median(exemplar_diameters)))
        if cfg.size in ("labels", "exemplar"):
            return first
        found = maps_labels(mean_maps(models[:1], image, first, ["none"]), cfg)
        diameter = label_image_diameter(found)
        return first if diameter <= 0 else scale * model.zoom(diameter)
