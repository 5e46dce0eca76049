"""Our U-Nets must accept nnU-Net checkpoints' state_dicts as they are (keys from
dynamic_network_architectures 0.4.4, incl. its duplicate registrations)."""

from __future__ import annotations

import pytest
import torch

from segmenter.errors import ModelError
from segmenter.nnunet_arch import build_network
from tests.nnunet_fixtures import ModelSpec, plans_for


def _arch(spec: ModelSpec) -> tuple[str, dict[str, object]]:
    cfg = plans_for(spec)["configurations"][spec.configuration]  # type: ignore[index]
    return cfg["architecture"]["network_class_name"], cfg["architecture"]["arch_kwargs"]


def test_plain_unet_keys_follow_the_library() -> None:
    name, kw = _arch(ModelSpec("k", features=(4, 8, 16)))
    keys = list(build_network(name, kw, 1, 3).state_dict())
    # the library registers each conv twice (conv, all_modules.0) and the encoder again under the decoder
    assert keys[:4] == ["encoder.stages.0.0.convs.0.conv.weight", "encoder.stages.0.0.convs.0.conv.bias",
                        "encoder.stages.0.0.convs.0.norm.weight", "encoder.stages.0.0.convs.0.norm.bias"]
    assert "encoder.stages.0.0.convs.0.all_modules.0.weight" in keys
    assert "decoder.encoder.stages.2.0.convs.1.all_modules.1.bias" in keys
    assert "decoder.transpconvs.0.weight" in keys and "decoder.seg_layers.1.bias" in keys
    assert len(keys) == 120


def test_residual_unet_keys_follow_the_library() -> None:
    name, kw = _arch(ModelSpec("r", architecture="ResidualEncoderUNet", features=(4, 8, 16)))
    keys = list(build_network(name, kw, 1, 3).state_dict())
    assert keys[0] == "encoder.stem.convs.0.conv.weight"
    assert "encoder.stages.1.blocks.0.skip.1.conv.weight" in keys  # avg-pool, then 1x1 projection
    assert "encoder.stages.1.blocks.1.conv2.norm.weight" in keys
    assert not any(k.startswith("encoder.stages.0.blocks.0.skip") for k in keys)  # identity skip


@pytest.mark.parametrize("configuration,patch", [("3d_fullres", (16, 32, 32)), ("2d", (32, 32))])
def test_output_shape(configuration: str, patch: tuple[int, ...]) -> None:
    spec = ModelSpec("s", configuration=configuration, patch=patch, spacing=(1.0,) * len(patch), n_classes=5)
    net = build_network(*_arch(spec), 1, 5)
    with torch.inference_mode():
        out = net(torch.randn(2, 1, *patch))
    assert tuple(out.shape) == (2, 5, *patch)


def test_unknown_class_is_refused() -> None:
    _, kw = _arch(ModelSpec("u"))
    with pytest.raises(ModelError, match="unsupported network class"):
        build_network("dynamic_network_architectures.architectures.primus.Primus", kw, 1, 2)


def test_unknown_op_is_refused() -> None:
    name, kw = _arch(ModelSpec("u"))
    with pytest.raises(ModelError, match="norm_op"):
        build_network(name, {**kw, "norm_op": "os.system"}, 1, 2)


def test_malformed_kwargs_are_refused() -> None:
    name, kw = _arch(ModelSpec("u"))
    with pytest.raises(ModelError, match="one entry per stage"):
        build_network(name, {**kw, "features_per_stage": [4, 8]}, 1, 2)
