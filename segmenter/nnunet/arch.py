"""The U-Nets nnU-Net v2 trains, rebuilt without ``dynamic_network_architectures``.

nnU-Net's plans name a network class of ``dynamic_network_architectures`` (PlainConvUNet,
ResidualEncoderUNet) and its keyword arguments. That library pulls timm and torchvision, which pin
a torch build far larger than the one this node runs on, so we keep our own modules here. Module
names, their nesting and the order of registration reproduce the library's exactly, so the
``state_dict`` keys of an nnU-Net checkpoint (including the duplicates the library registers:
``conv`` beside ``all_modules.0``, and the encoder again under ``decoder.encoder``) load with
``strict=True``. The blocks the networks are made of are in :mod:`segmenter.nnunet.blocks`.
``tests/unit/test_nnunet_arch.py`` checks the key sets and the outputs against the
library where it is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segmenter.core.errors import ModelError
from segmenter.nnunet.blocks import Ops, StackedConvBlocks, StackedResidualBlocks, as_list, channels_last_format

log = logging.getLogger(__name__)

_CONV_OPS: dict[str, type[nn.Module]] = {
    "torch.nn.modules.conv.Conv2d": nn.Conv2d,
    "torch.nn.modules.conv.Conv3d": nn.Conv3d,
    "torch.nn.Conv2d": nn.Conv2d,
    "torch.nn.Conv3d": nn.Conv3d,
}
_NORM_OPS: dict[str, type[nn.Module]] = {
    "torch.nn.modules.instancenorm.InstanceNorm2d": nn.InstanceNorm2d,
    "torch.nn.modules.instancenorm.InstanceNorm3d": nn.InstanceNorm3d,
    "torch.nn.InstanceNorm2d": nn.InstanceNorm2d,
    "torch.nn.InstanceNorm3d": nn.InstanceNorm3d,
    "torch.nn.modules.batchnorm.BatchNorm2d": nn.BatchNorm2d,
    "torch.nn.modules.batchnorm.BatchNorm3d": nn.BatchNorm3d,
    "torch.nn.BatchNorm2d": nn.BatchNorm2d,
    "torch.nn.BatchNorm3d": nn.BatchNorm3d,
}
_DROPOUT_OPS: dict[str, type[nn.Module]] = {
    "torch.nn.modules.dropout.Dropout2d": nn.Dropout2d,
    "torch.nn.modules.dropout.Dropout3d": nn.Dropout3d,
    "torch.nn.Dropout2d": nn.Dropout2d,
    "torch.nn.Dropout3d": nn.Dropout3d,
}
_NONLINS: dict[str, type[nn.Module]] = {
    "torch.nn.LeakyReLU": nn.LeakyReLU,
    "torch.nn.modules.activation.LeakyReLU": nn.LeakyReLU,
    "torch.nn.ReLU": nn.ReLU,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
    "torch.nn.GELU": nn.GELU,
    "torch.nn.modules.activation.GELU": nn.GELU,
}
_ARCHITECTURES = ("PlainConvUNet", "ResidualEncoderUNet")


class _Encoder(nn.Module):
    """Shared shape of both encoders: optional stem, then one module per resolution stage."""

    output_channels: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    stages: nn.Sequential

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = getattr(self, "stem", None)
        if stem is not None:
            x = stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class PlainConvEncoder(_Encoder):
    def __init__(self, ops: Ops, c_in: int, features: Sequence[int], kernels: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], n_convs: Sequence[int], nonlin_first: bool = False) -> None:
        super().__init__()
        stages = []
        for s, c_out in enumerate(features):
            stages.append(nn.Sequential(StackedConvBlocks(ops, n_convs[s], c_in, c_out, kernels[s], strides[s],
                                                          nonlin_first)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.output_channels = list(features)
        self.strides = [as_list(s, ops.ndim) for s in strides]
        self.kernel_sizes = [as_list(k, ops.ndim) for k in kernels]


class ResidualEncoder(_Encoder):
    def __init__(self, ops: Ops, c_in: int, features: Sequence[int], kernels: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], n_blocks: Sequence[int], stem_channels: int | None) -> None:
        super().__init__()
        stem_c = stem_channels if stem_channels is not None else features[0]
        self.stem = StackedConvBlocks(ops, 1, c_in, stem_c, kernels[0], 1)
        c_in = stem_c
        stages = []
        for s, c_out in enumerate(features):
            stages.append(StackedResidualBlocks(ops, n_blocks[s], c_in, c_out, kernels[s], strides[s]))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.output_channels = list(features)
        self.strides = [as_list(s, ops.ndim) for s in strides]
        self.kernel_sizes = [as_list(k, ops.ndim) for k in kernels]


class UNetDecoder(nn.Module):
    """Transposed conv up, concatenate the skip, convs; one 1x1 seg layer per stage (last one used)."""

    def __init__(self, ops: Ops, encoder: _Encoder, num_classes: int, n_convs: Sequence[int],
                 nonlin_first: bool = False) -> None:
        super().__init__()
        self.encoder = encoder  # registered, as the library does: its keys repeat under decoder.encoder
        n = len(encoder.output_channels)
        stages, transpconvs, seg_layers = [], [], []
        for s in range(1, n):
            below = encoder.output_channels[-s]
            skip = encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            transpconvs.append(ops.transposed_conv(below, skip, stride, stride, bias=ops.conv_bias))
            stages.append(StackedConvBlocks(ops, n_convs[s - 1], 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1,
                                            nonlin_first))
            seg_layers.append(ops.conv(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)

    def features(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """The full-resolution features the last seg layer (a 1x1 conv) turns into logits."""
        x = skips[-1]
        for s in range(len(self.stages)):
            x = self.transpconvs[s](x)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = self.stages[s](x)
        return x

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = self.seg_layers[-1](self.features(skips))
        return out


class UNet(nn.Module):
    """Encoder + decoder; inference only (no deep-supervision outputs)."""

    def __init__(self, encoder: _Encoder, decoder: UNetDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.channels_last = False

    def set_channels_last(self, enabled: bool) -> UNet:
        """Run (and keep the weights) channels-last, or back to the default layout; in place."""
        fmt = channels_last_format(self.head.weight.dim()) if enabled else torch.contiguous_format
        # Module.to accepts memory_format at runtime (it converts the 4-D and 5-D parameters); torch's stubs omit it
        self.to(memory_format=fmt)  # type: ignore[call-overload]
        self.channels_last = enabled
        return self

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=channels_last_format(x.dim())) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(self.encoder(self._input(x)))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder.features(self.encoder(self._input(x)))

    @property
    def head(self) -> nn.Conv2d | nn.Conv3d:
        """The 1x1 conv from features to logits: affine and pointwise, so it commutes with
        mirroring, averaging and cutting a tile into slabs."""
        layer = self.decoder.seg_layers[-1]
        if not isinstance(layer, nn.Conv2d | nn.Conv3d):  # build_network only makes these (_CONV_OPS)
            raise ModelError(f"the network's last layer is a {type(layer).__name__}, not a convolution")
        return layer


def _lookup(table: dict[str, type[nn.Module]], name: object, what: str) -> type[nn.Module] | None:
    if name is None:
        return None
    if not isinstance(name, str) or name not in table:
        raise ModelError(f"unsupported {what} {name!r} in the plans' architecture (supported: {sorted(table)})")
    return table[name]


def _per_stage(kwargs: dict[str, Any], key: str, n: int) -> list[int]:
    value = kwargs.get(key)
    if isinstance(value, int):
        return [value] * n
    if not isinstance(value, list) or len(value) != n:
        raise ModelError(f"architecture: {key!r} must have one entry per stage ({n}), got {value!r}")
    return [int(v) for v in value]


def build_network(class_name: str, arch_kwargs: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """The network an nnU-Net v2 plans ``architecture`` entry describes, in eval mode."""
    short = class_name.rsplit(".", 1)[-1]
    if short not in _ARCHITECTURES:
        raise ModelError(f"unsupported network class {class_name!r}; supported: {', '.join(_ARCHITECTURES)}")
    try:
        n = int(arch_kwargs["n_stages"])
        conv = _lookup(_CONV_OPS, arch_kwargs["conv_op"], "conv_op")
        if conv is None:
            raise ModelError("architecture: conv_op is missing")
        ops = Ops(
            conv=conv,
            norm=_lookup(_NORM_OPS, arch_kwargs.get("norm_op"), "norm_op"),
            norm_kwargs=dict(arch_kwargs.get("norm_op_kwargs") or {}),
            dropout=_lookup(_DROPOUT_OPS, arch_kwargs.get("dropout_op"), "dropout_op"),
            dropout_kwargs=dict(arch_kwargs.get("dropout_op_kwargs") or {}),
            nonlin=_lookup(_NONLINS, arch_kwargs.get("nonlin"), "nonlin"),
            nonlin_kwargs=dict(arch_kwargs.get("nonlin_kwargs") or {}),
            conv_bias=bool(arch_kwargs.get("conv_bias", False)),
        )
        features = _per_stage(arch_kwargs, "features_per_stage", n)
        kernels = [as_list(k, ops.ndim) for k in arch_kwargs["kernel_sizes"]]
        strides = [as_list(s, ops.ndim) for s in arch_kwargs["strides"]]
        n_dec = _per_stage(arch_kwargs, "n_conv_per_stage_decoder", n - 1)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"architecture entry of the plans is incomplete or malformed: {exc}") from exc
    if len(kernels) != n or len(strides) != n:
        raise ModelError(f"architecture: kernel_sizes and strides need {n} entries")
    nonlin_first = bool(arch_kwargs.get("nonlin_first", False))
    encoder: _Encoder
    if short == "PlainConvUNet":
        encoder = PlainConvEncoder(ops, in_channels, features, kernels, strides,
                                   _per_stage(arch_kwargs, "n_conv_per_stage", n), nonlin_first)
    else:
        block = str(arch_kwargs.get("block", "BasicBlockD")).rsplit(".", 1)[-1]
        if block != "BasicBlockD":
            raise ModelError(f"unsupported residual block {block!r} (only BasicBlockD)")
        stem = arch_kwargs.get("stem_channels")
        encoder = ResidualEncoder(ops, in_channels, features, kernels, strides,
                                  _per_stage(arch_kwargs, "n_blocks_per_stage", n),
                                  int(stem) if stem is not None else None)
        nonlin_first = False
    decoder = UNetDecoder(ops, encoder, num_classes, n_dec, nonlin_first)
    net = UNet(encoder, decoder)
    net.eval()
    log.debug("built %s: %d stages, %d classes, %d parameters", short, n, num_classes,
              sum(p.numel() for p in net.parameters()))
    return net


