"""One factory for every network: timm's registry, which also holds our own small nets (registered
here with timm's decorator, so `timm.create_model("resnet_small")` finds them too). Pretrained weights
only ever come from a local safetensors file; nothing is downloaded."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from timm.models import register_model
from torch import nn

from tasks.common.errors import UserError

log = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A CIFAR-style residual CNN for 16-64 px images: a 3x3 stem without pooling (ImageNet stems
    throw away most of a 28 px image in their first stride-4), three stages, global pooling."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64, 128),
        blocks_per_stage: int = 2,
        drop_rate: float = 0.1,
        stem_width: int | None = None,
        first_stage_stride: int = 1,
    ):
        super().__init__()
        stem_width = stem_width or widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU()
        )
        stages, cin = [], stem_width
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = (first_stage_stride if i == 0 else 2) if j == 0 else 1
                stages.append(BasicBlock(cin, width, stride))
                cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.drop(x))


# our own networks, registered in timm's registry under these names
OWN_NETWORKS = ("resnet_small", "resnet_tiny", "resnet_strided", "resnet_wide")


def own_network(name: str, pretrained: bool, **kwargs) -> ResNetSmall:
    # timm's create_model passes its hub arguments to every entrypoint; ours have no hub weights
    if pretrained:
        raise UserError(f"{name} has no published weights: give train.pretrained_path (a local .safetensors file)")
    return ResNetSmall(**kwargs)


@register_model
def resnet_small(
    pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs
) -> ResNetSmall:
    return own_network("resnet_small", pretrained, **kwargs)


@register_model
def resnet_tiny(
    pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs
) -> ResNetSmall:
    """resnet_small at half the width (16, 32, 64): about 4x fewer FLOPs, for CPU budgets."""
    return own_network("resnet_tiny", pretrained, widths=(16, 32, 64), **kwargs)


@register_model
def resnet_strided(
    pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs
) -> ResNetSmall:
    """resnet_small's widths (32, 64, 128) with its first stage strided too (a 16-wide stem at full
    resolution, then stages at 1/2, 1/4, 1/8): resnet_tiny's cost on a CPU with resnet_small's capacity."""
    return own_network(
        "resnet_strided", pretrained, widths=(32, 64, 128), stem_width=16, first_stage_stride=2, **kwargs
    )


@register_model
def resnet_wide(
    pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs
) -> ResNetSmall:
    """resnet_small at twice the width (64, 128, 256): about 4x the FLOPs, for GPUs, where the small
    one is bound by kernel launches and the data loader rather than by arithmetic."""
    return own_network("resnet_wide", pretrained, widths=(64, 128, 256), **kwargs)


def build_network(
    name: str, num_classes: int, in_chans: int, pretrained: bool = False, pretrained_path: str | Path | None = None
) -> nn.Module:
    """Any timm architecture (or our own) by name. Weights start random unless `pretrained_path`
    names a local safetensors file; `pretrained=True` without a path is an error, never a download."""
    if not timm.is_model(name):
        raise UserError(f"unknown network {name!r}: use resnet_small or a timm architecture name (timm.list_models())")
    if pretrained and pretrained_path is None:
        raise UserError(f"pretrained {name} needs a local weights file (train.pretrained_path); nothing is downloaded")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if pretrained_path is not None:
        load_pretrained(model, pretrained_path)
    return model


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Load a safetensors state dict into `model`, keeping only tensors whose name and shape match
    (a head trained for another class count is dropped). Returns the keys left at their fresh init."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained weights {path} not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"pretrained weights {path}: not a safetensors file ({exc})") from None
    # weights exported from our LightningModule carry its attribute name as a prefix
    if all(k.startswith("network.") for k in state):
        state = {k.removeprefix("network."): v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"pretrained weights {path}: no tensor matches the network by name and shape")
    result = model.load_state_dict(usable, strict=False)
    reinitialised = sorted(result.missing_keys)
    if reinitialised:
        log.info(
            "pretrained %s: %d tensors loaded, reinitialised: %s", path.name, len(usable), ", ".join(reinitialised)
        )
    return reinitialised
