"""Clip transforms on torch tensors (torchvision does not load with the CPU torch build used here).

Clips are ``[T, 3, H, W]`` (any leading dims work for the per-pixel ops). Spatial choices (crop box, flip, jitter
factors) are drawn once per clip so that all frames of a clip move together.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# test time: resize the short side to size / CROP_RATIO, then centre crop size (256 -> 224 is the usual 0.875)
CROP_RATIO = 0.875

# per-backbone input normalisation: (mean, std) on 0..1 RGB
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "resnet50": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
    "tiny": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # plain 0..1 scaling for small models trained from scratch
}


def register_normalization(backbone: str, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
    """Add the input statistics of another backbone."""
    NORMALIZATION[backbone] = (tuple(mean), tuple(std))


def normalize(x: torch.Tensor, backbone: str) -> torch.Tensor:
    """Uint8 (0..255) or float (0..1) clips [..., 3, H, W] -> float32 normalised for ``backbone``."""
    if backbone not in NORMALIZATION:
        raise KeyError(f"no normalisation for backbone '{backbone}'; known: {', '.join(sorted(NORMALIZATION))}")
    mean, std = NORMALIZATION[backbone]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean_t) / std_t


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def _like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Back to the input's dtype (uint8 clips stay uint8)."""
    return (y * 255.0).round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of [..., C, H, W] to [..., C, height, width]."""
    if x.shape[-2:] == (height, width):
        return x
    lead = x.shape[:-3]
    y = F.interpolate(_to_float(x).reshape(-1, *x.shape[-3:]), size=(height, width), mode="bilinear",
                      align_corners=False, antialias=True)
    return _like(y.reshape(*lead, *y.shape[-3:]), x)


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Scale so that the shorter side is ``size``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    if h <= w:
        return resize(x, size, max(size, round(w * size / h)))
    return resize(x, max(size, round(h * size / w)), size)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window (the input must be at least that large)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {h}x{w} frame; resize it first")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def random_resized_crop(x: torch.Tensor, size: int, scale: tuple[float, float] = (0.4, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop a random box (area fraction in ``scale``, aspect ratio in ``ratio``) and resize it to size x size."""
    h, w = x.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * _uniform(*scale, generator)
        aspect = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), generator))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(w - cw + 1, (1,), generator=generator))
            return resize(x[..., top:top + ch, left:left + cw], size, size)
    side = min(h, w)  # fall back to the largest centred square
    return resize(center_crop(x, side), size, size)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - v, 1 + v], one draw per clip."""
    y = _to_float(x)
    b = _uniform(1 - brightness, 1 + brightness, generator)
    c = _uniform(1 - contrast, 1 + contrast, generator)
    s = _uniform(1 - saturation, 1 + saturation, generator)
    y = (y * b).clamp(0, 1)
    mean = _gray(y).mean(dim=(-3, -2, -1), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * s + gray).clamp(0, 1)
    return _like(y, x)


def _with_extra(frames: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    """Stack extra per-pixel channels (e.g. masks, float 0..1) after RGB so geometric ops treat them alike."""
    x = _to_float(frames)
    return x if extra is None else torch.cat([x, extra.float()], dim=-3)


def test_transform(frames: torch.Tensor, size: int, crop_ratio: float = CROP_RATIO,
                   extra: torch.Tensor | None = None):
    """Resize short side to ``round(size / crop_ratio)`` and centre-crop ``size`` (deterministic).

    Works in float and rounds once at the end. With ``extra`` ([T, C', H, W], e.g. masks) returns
    ``(clip, extra)`` transformed the same way.
    """
    x = center_crop(resize_short_side(_with_extra(frames, extra), round(size / crop_ratio)), size)
    rgb = _like(x[..., :3, :, :], frames)
    return rgb if extra is None else (rgb, x[..., 3:, :, :])


def train_transform(frames: torch.Tensor, size: int, generator: torch.Generator | None = None, flip: bool = False,
                    jitter: bool = True, crop_ratio: float = CROP_RATIO, scale: tuple[float, float] = (0.4, 1.0),
                    extra: torch.Tensor | None = None):
    """Resize short side, random resized crop to ``size``, optional flip, colour jitter (same for all frames).

    ``extra`` channels (masks) get the same crop and flip but no jitter; then ``(clip, extra)`` is returned.
    """
    x = resize_short_side(_with_extra(frames, extra), round(size / crop_ratio))
    x = random_resized_crop(x, size, scale=scale, generator=generator)
    if flip:
        x = hflip(x)
    rgb, ext = x[..., :3, :, :], x[..., 3:, :, :]
    if jitter:
        rgb = color_jitter(rgb, generator=generator)
    rgb = _like(rgb, frames)
    return rgb if extra is None else (rgb, ext)
