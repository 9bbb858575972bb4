"""Family `flow_unet`: a small U-Net predicting a cell probability, cellpose-style flows and class
scores per pixel; masks come back by following the flows (pipeline.models.flow_maps).

Trained from random weights it learns from a few dozen images (the cellpose / stardist lesson).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import FlowUNetConfig
from pipeline.models.base import register
from pipeline.models.flow_maps import FlowFamily, normalise, pad_to, padded_size


def _block(c_in: int, c_out: int) -> nn.Sequential:
    groups = math.gcd(8, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain U-Net: `channels` per level (each level halves the size), skip connections by
    concatenation, a 1x1 output convolution to `out_channels`."""

    def __init__(self, channels: Sequence[int], out_channels: int):
        super().__init__()
        self.down = nn.ModuleList()
        c_in = 1
        for c in channels:
            self.down.append(_block(c_in, c))
            c_in = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_skip in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(c_in, c_skip, 2, stride=2))
            self.merge.append(_block(2 * c_skip, c_skip))
            c_in = c_skip
        self.head = nn.Conv2d(c_in, out_channels, 1)

    @property
    def stride(self) -> int:
        return 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@register
class FlowUNetModel(FlowFamily):
    """U-Net with outputs (cell logit, dy, dx, class logits...); masks by following the flows."""

    family = "flow_unet"
    config_class = FlowUNetConfig
    class_heads = ("net.head.",)

    def __init__(self, cfg: FlowUNetConfig, classes: Sequence[str], scale: float = 1.0):
        super().__init__(cfg, classes, scale)
        self.net = UNet(cfg.channels, 3 + len(self.classes))

    def batch_maps(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each image normalised, padded to one size that the U-Net's stride divides."""
        height = max(int(im.shape[-2]) for im in images)
        width = max(int(im.shape[-1]) for im in images)
        height, width = padded_size(height, width, self.net.stride)
        return self.net(torch.cat([pad_to(normalise(im[None]), height, width) for im in images]))

    @torch.no_grad()
    def image_maps(self, image: torch.Tensor, scale: float) -> torch.Tensor:
        """The image resized by `scale`, normalised, its maps resized back."""
        height, width = (int(s) for s in image.shape[-2:])
        x = image[None].float()
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True)
        maps = self.batch_maps([x[0]])[..., : x.shape[-2], : x.shape[-1]]
        if maps.shape[-2:] != (height, width):
            maps = F.interpolate(maps, (height, width), mode="bilinear")
            maps[:, 1:3] /= scale  # flows in the image's own pixels
        return maps[0].float()
