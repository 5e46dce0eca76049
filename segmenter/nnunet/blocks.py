"""The building blocks of nnU-Net v2's U-Nets: conv-norm-nonlin layers, their stacks and residual blocks.

Attribute names and the order of registration are those of ``dynamic_network_architectures``, so the
``state_dict`` keys of an nnU-Net checkpoint load unchanged (see :mod:`segmenter.nnunet.arch`). In eval mode
an instance norm over a channels-last tensor runs through :func:`instance_norm_channels_last_`, which keeps the
layout and nnU-Net's accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_DROPOUT_TYPES = (nn.Dropout2d, nn.Dropout3d)


@dataclass(frozen=True)
class Ops:
    """The layer types and their arguments, shared by every block of one network."""

    conv: type[nn.Module]
    norm: type[nn.Module] | None
    norm_kwargs: dict[str, Any]
    dropout: type[nn.Module] | None
    dropout_kwargs: dict[str, Any]
    nonlin: type[nn.Module] | None
    nonlin_kwargs: dict[str, Any]
    conv_bias: bool

    @property
    def ndim(self) -> int:
        return 3 if self.conv is nn.Conv3d else 2

    @property
    def transposed_conv(self) -> type[nn.Module]:
        return nn.ConvTranspose3d if self.conv is nn.Conv3d else nn.ConvTranspose2d

    @property
    def avg_pool(self) -> type[nn.Module]:
        return nn.AvgPool3d if self.conv is nn.Conv3d else nn.AvgPool2d


_INSTANCE_NORMS = (nn.InstanceNorm2d, nn.InstanceNorm3d)


def channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


_SUM_BLOCK = 256


def _row_sums(flat: torch.Tensor) -> torch.Tensor:
    """Column sums of a (rows, C) matrix in stages of ``_SUM_BLOCK`` rows.

    torch sums a strided (non-innermost) axis sequentially, one running float32 total per column:
    over the 2 M rows of a 128^3 tile that loses ~1e-3 of a logit, enough to flip argmaxes against
    nnU-Net. Short partial sums keep the error at instance norm's own level (~1e-6)."""
    while flat.shape[0] > _SUM_BLOCK:
        rows = int(flat.shape[0])
        full = rows - rows % _SUM_BLOCK
        part = flat[:full].view(-1, _SUM_BLOCK, flat.shape[1]).sum(1)
        if full < rows:
            part = torch.cat([part, flat[full:].sum(0, keepdim=True)])
        flat = part
    return flat.sum(0)


def _row_sums_of_squares(flat: torch.Tensor) -> torch.Tensor:
    rows = int(flat.shape[0])
    full = rows - rows % _SUM_BLOCK
    part = torch.linalg.vector_norm(flat[:full].view(-1, _SUM_BLOCK, flat.shape[1]), dim=1).square_()
    if full < rows:
        part = torch.cat([part, flat[full:].square().sum(0, keepdim=True)])
    return _row_sums(part)


def instance_norm_channels_last_(x: torch.Tensor, norm: nn.InstanceNorm2d | nn.InstanceNorm3d) -> torch.Tensor:
    """``norm(x)`` for an instance norm without running statistics and a channels-last ``x``,
    returned channels-last. Overwrites ``x`` (the caller passes a convolution's fresh output).

    Two passes as instance norm itself: mean, then the biased variance about it (both with the
    staged sums above), then one fused scale-and-shift."""
    n, c = int(x.shape[0]), int(x.shape[1])
    spatial = tuple(int(s) for s in x.shape[2:])
    outs = []
    for i in range(n):
        # (C, *S) channels-last -> (*S, C) -> (voxels, C): a view, no copy
        flat = x[i].movedim(0, -1).reshape(-1, c)
        voxels = int(flat.shape[0])
        flat.sub_(_row_sums(flat) / voxels)
        residual = _row_sums(flat) / voxels  # what rounding left of the mean
        var = _row_sums_of_squares(flat) / voxels - residual * residual
        y = nn.functional.batch_norm(flat, residual, var, norm.weight, norm.bias, False, 0.0, norm.eps)
        outs.append(y.view(1, *spatial, c).movedim(-1, 1))
    return outs[0] if n == 1 else torch.cat(outs)


def as_list(value: int | Sequence[int], ndim: int) -> list[int]:
    return [int(value)] * ndim if isinstance(value, int) else [int(v) for v in value]


class ConvDropoutNormReLU(nn.Module):
    """conv -> [dropout] -> [norm] -> [nonlin]; ``nonlin_first`` swaps the last two."""

    def __init__(self, ops: Ops, c_in: int, c_out: int, kernel: int | Sequence[int], stride: int | Sequence[int],
                 *, bias: bool | None = None, plain: bool = False, nonlin_first: bool = False) -> None:
        super().__init__()
        kernel_l = as_list(kernel, ops.ndim)
        stride_l = as_list(stride, ops.ndim)
        self.stride = stride_l
        self.conv = ops.conv(c_in, c_out, kernel_l, stride_l, padding=[(k - 1) // 2 for k in kernel_l],
                             dilation=1, bias=ops.conv_bias if bias is None else bias)
        layers: list[nn.Module] = [self.conv]
        if ops.dropout is not None and not plain:
            self.dropout = ops.dropout(**ops.dropout_kwargs)
            layers.append(self.dropout)
        if ops.norm is not None:
            self.norm = ops.norm(c_out, **ops.norm_kwargs)
            layers.append(self.norm)
        if ops.nonlin is not None and not plain:
            self.nonlin = ops.nonlin(**ops.nonlin_kwargs)
            layers.append(self.nonlin)
            if nonlin_first and ops.norm is not None:
                layers[-1], layers[-2] = layers[-2], layers[-1]
        self.all_modules = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, "norm", None)
        if self.training or not isinstance(norm, _INSTANCE_NORMS) or norm.track_running_stats:
            out: torch.Tensor = self.all_modules(x)
            return out
        # the same layers in the same order, with instance norm done layout-aware (dropout is the
        # identity in eval mode)
        y = x
        for layer in self.all_modules:
            if layer is norm and y.dim() > 3 and y.is_contiguous(memory_format=channels_last_format(y.dim())):
                y = instance_norm_channels_last_(y, norm)
            elif not isinstance(layer, _DROPOUT_TYPES):
                y = layer(y)
        return y


class StackedConvBlocks(nn.Module):
    def __init__(self, ops: Ops, n_convs: int, c_in: int, c_out: int, kernel: int | Sequence[int],
                 first_stride: int | Sequence[int], nonlin_first: bool = False) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            ConvDropoutNormReLU(ops, c_in, c_out, kernel, first_stride, nonlin_first=nonlin_first),
            *[ConvDropoutNormReLU(ops, c_out, c_out, kernel, 1, nonlin_first=nonlin_first) for _ in range(1, n_convs)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.convs(x)
        return out


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class BasicBlockD(nn.Module):
    """Residual block: two convs, average-pool + 1x1 projection on the skip where shape changes."""

    def __init__(self, ops: Ops, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = ConvDropoutNormReLU(ops, c_in, c_out, kernel, stride)
        self.conv2 = ConvDropoutNormReLU(ops, c_out, c_out, kernel, 1, plain=True)
        self.nonlin2: nn.Module = ops.nonlin(**ops.nonlin_kwargs) if ops.nonlin is not None else _Identity()
        stride_l = as_list(stride, ops.ndim)
        has_stride = any(s != 1 for s in stride_l)
        skip: list[nn.Module] = []
        if has_stride:
            skip.append(ops.avg_pool(stride_l, stride_l))
        if c_in != c_out:
            skip.append(ConvDropoutNormReLU(ops, c_in, c_out, 1, 1, bias=False, plain=True))
        # an unregistered identity keeps the keys equal to the library's lambda
        self._skip_is_identity = not skip
        if skip:
            self.skip = nn.Sequential(*skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self._skip_is_identity else self.skip(x)
        out = self.conv2(self.conv1(x))
        out = out + residual
        result: torch.Tensor = self.nonlin2(out)
        return result


class StackedResidualBlocks(nn.Module):
    def __init__(self, ops: Ops, n_blocks: int, c_in: int, c_out: int, kernel: Sequence[int],
                 first_stride: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            BasicBlockD(ops, c_in, c_out, kernel, first_stride),
            *[BasicBlockD(ops, c_out, c_out, kernel, [1] * ops.ndim) for _ in range(1, n_blocks)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.blocks(x)
        return out
