"""Our U-Nets must accept nnU-Net checkpoints' state_dicts as they are (keys from
dynamic_network_architectures 0.4.4, incl. its duplicate registrations)."""

from __future__ import annotations

import pytest
import torch

from segmenter.core.errors import ModelError
from segmenter.nnunet import blocks
from segmenter.nnunet.arch import UNet, build_network
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


@pytest.mark.parametrize("architecture", ["PlainConvUNet", "ResidualEncoderUNet"])
@pytest.mark.parametrize("configuration,patch", [("3d_fullres", (16, 32, 32)), ("2d", (32, 32))])
def test_channels_last_gives_the_same_logits(architecture: str, configuration: str, patch: tuple[int, ...]) -> None:
    spec = ModelSpec("c", configuration=configuration, patch=patch, spacing=(1.0,) * len(patch), n_classes=5,
                     architecture=architecture)
    torch.manual_seed(0)
    net = build_network(*_arch(spec), 1, 5)
    assert isinstance(net, UNet)
    for p in net.parameters():  # the default init leaves norms at identity: perturb them so they matter
        p.data.add_(0.1 * torch.randn_like(p))
    x = 3 * torch.randn(2, 1, *patch) + 2
    with torch.inference_mode():
        ref = net(x)
        used: list[int] = []
        original = blocks.instance_norm_channels_last_

        def spy(y: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
            used.append(1)
            return original(y, norm)

        blocks.instance_norm_channels_last_ = spy  # type: ignore[assignment]
        try:
            out = net.set_channels_last(True)(x)
        finally:
            blocks.instance_norm_channels_last_ = original  # type: ignore[assignment]
        back = net.set_channels_last(False)(x)
    assert used, "the channels-last instance norm was never used"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(back, ref)


def test_channels_last_instance_norm_is_as_accurate_as_torchs() -> None:
    """Large mean, many voxels: a plain float32 running sum over 2 M voxels (what batch_norm does on
    a (voxels, C) matrix) is off by ~1e-3 here; instance norm itself by ~1e-6."""
    torch.manual_seed(0)
    x = (3 * torch.randn(1, 4, 128, 128, 128) + 20).contiguous(memory_format=torch.channels_last_3d)
    norm = torch.nn.InstanceNorm3d(4, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    with torch.inference_mode():
        exact = torch.nn.functional.instance_norm(x.double(), weight=norm.weight.double(), bias=norm.bias.double(),
                                                  eps=norm.eps)
        theirs = norm(x.contiguous())
        ours = blocks.instance_norm_channels_last_(x.clone(memory_format=torch.channels_last_3d), norm)
    assert ours.is_contiguous(memory_format=torch.channels_last_3d)
    err_ours = float((ours.double() - exact).abs().max())
    err_torch = float((theirs.double() - exact).abs().max())
    assert err_ours < max(4 * err_torch, 1e-5), (err_ours, err_torch)
