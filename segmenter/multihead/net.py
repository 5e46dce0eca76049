"""Networks of the multi-head (CL-Net-style) engine: one general encoder, many decoder heads.

The general encoder (GE) is the encoder half of a 3D U-Net: per stage two Conv3d(3x3x3) ->
InstanceNorm(affine) -> LeakyReLU(0.01) blocks, the first of every stage after the first strided by 2
(nnU-Net v1/clNet's plain conv U-Net). Each head is a full U-Net decoder of its own width reading
every encoder stage through skip connections; its widths are explicit per level
(``[transposed-conv out, conv1 out, conv2 out]``) so a channel-pruned head rebuilds from its config.

``MultiHeadNet.forward`` runs the encoder once and every requested head on its features. A head's
output has one channel per class (``softmax``: background + its structures) or one logit per label-tree
node (``salt``, see :mod:`segmenter.multihead.salt`).

Feature-level supporting (CL-Net's FL-supporting, SOARS's anchor guidance): a head may name earlier
heads as its *supporters*. Their logits, detached, are concatenated with the head's own logits and
fused (Conv3d 3x3x3 to twice the head's channels -> InstanceNorm -> LeakyReLU -> Conv3d 1x1x1 back to
the head's channels); the fused map times a learnable gate (0.5 at start) is added to the head's own
logits. The fusion belongs to the supported head (``supports.<head>.*`` in the weights), so the
supporters' weights and outputs are never changed by it. clNet fuses at every deep-supervision scale;
our decoders have one output scale, so the fusion acts there.

Adapters (ours; the issue's "optionally a small adapter"): a head added to a frozen encoder may own
an :class:`Adapter`, one residual bottleneck per encoder stage, ``s + up(LeakyReLU(down(s)))`` with
1x1x1 convolutions ``C -> r -> C`` (``r`` per stage, 0 = stage passed through). ``up`` starts at zero,
so training starts from the frozen features exactly; the adapted features feed that head only
(``adapters.<head>.*`` in the weights), so the encoder, the other heads and the supporters' logits
never see them. clNet has no adapter: its only way to move the features is ``finetune_encoder``, a
private copy of the whole encoder per head; an adapter costs ~2 C r weights per stage instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from segmenter.core.errors import ModelError

log = logging.getLogger(__name__)

Widths = tuple[tuple[int, int, int], ...]


class ConvNormAct(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = nn.InstanceNorm3d(c_out, affine=True, eps=1e-5)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.norm(self.conv(x)))
        return out


class Encoder(nn.Module):
    """Stages of two ConvNormAct blocks; returns every stage's output (shallow to deep)."""

    def __init__(self, in_channels: int, features: Sequence[int]) -> None:
        super().__init__()
        if len(features) < 2:
            raise ModelError(f"an encoder needs at least two stages, got features {list(features)}")
        self.features = tuple(int(f) for f in features)
        stages = []
        c = in_channels
        for i, f in enumerate(self.features):
            stages.append(nn.Sequential(ConvNormAct(c, f, stride=1 if i == 0 else 2), ConvNormAct(f, f)))
            c = f
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


def default_widths(encoder_features: Sequence[int], factor: float = 1.0) -> Widths:
    """Decoder widths mirroring the encoder (level 0 = deepest up-step), scaled by ``factor``."""
    out = []
    for skip in reversed(encoder_features[:-1]):
        w = max(1, round(skip * factor))
        out.append((w, w, w))
    return tuple(out)


class DecoderLevel(nn.Module):
    def __init__(self, c_below: int, c_skip: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        up, a, b = widths
        self.up = nn.ConvTranspose3d(c_below, up, 2, stride=2)
        self.conv1 = ConvNormAct(up + c_skip, a)
        self.conv2 = ConvNormAct(a, b)

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv2(self.conv1(torch.cat([self.up(below), skip], dim=1)))
        return out


class Decoder(nn.Module):
    """A U-Net decoder over the encoder's stages ending in a 1x1x1 conv to ``out_channels``."""

    def __init__(self, encoder_features: Sequence[int], widths: Widths, out_channels: int) -> None:
        super().__init__()
        feats = tuple(int(f) for f in encoder_features)
        if len(widths) != len(feats) - 1:
            raise ModelError(f"a decoder over {len(feats)} encoder stages needs {len(feats) - 1} width "
                             f"triples, got {len(widths)}")
        if out_channels < 1:
            raise ModelError(f"a decoder needs at least one output channel, got {out_channels}")
        self.widths: Widths = tuple((int(u), int(a), int(b)) for u, a, b in widths)
        levels = []
        c_below = feats[-1]
        for level, w in enumerate(self.widths):
            c_skip = feats[-2 - level]
            levels.append(DecoderLevel(c_below, c_skip, w))
            c_below = w[2]
        self.levels = nn.ModuleList(levels)
        self.seg = nn.Conv3d(c_below, out_channels, 1)
        self.out_channels = out_channels

    def blocks(self) -> list[DecoderLevel]:
        return [cast(DecoderLevel, b) for b in self.levels]

    def features(self, skips: Sequence[torch.Tensor], collect: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The last level's output, which the 1x1x1 classifier reads; ``collect`` receives every
        level's output, deepest first (deep supervision reads the lower ones)."""
        x = skips[-1]
        for level, block in enumerate(self.levels):
            x = block(x, skips[-2 - level])
            if collect is not None:
                collect.append(x)
        return x

    def forward(self, skips: Sequence[torch.Tensor], collect: list[torch.Tensor] | None = None) -> torch.Tensor:
        out: torch.Tensor = self.seg(self.features(skips, collect))
        return out


class Supporting(nn.Module):
    """Fuses a head's logits with its supporters' (see the module docstring)."""

    def __init__(self, own: int, supporters: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv3d(own + supporters, 2 * own, 3, padding=1),
                                  nn.InstanceNorm3d(2 * own, affine=True, eps=1e-5),
                                  nn.LeakyReLU(0.01, inplace=True), nn.Conv3d(2 * own, own, 1))
        self.gate = nn.Parameter(torch.tensor(0.5))

    def forward(self, own: torch.Tensor, support: Sequence[torch.Tensor]) -> torch.Tensor:
        fused: torch.Tensor = self.fuse(torch.cat([own, *support], dim=1))
        return own + self.gate * fused


class Adapter(nn.Module):
    """Residual 1x1x1 bottlenecks over the encoder's stages (see the module docstring)."""

    def __init__(self, encoder_features: Sequence[int], ranks: Sequence[int]) -> None:
        super().__init__()
        if len(ranks) != len(encoder_features):
            raise ModelError(f"an adapter over {len(encoder_features)} encoder stages needs {len(encoder_features)} "
                             f"ranks, got {list(ranks)}")
        if any(r < 0 for r in ranks) or not any(ranks):
            raise ModelError(f"adapter ranks must be >= 0 with at least one > 0, got {list(ranks)}")
        self.ranks = tuple(int(r) for r in ranks)
        # stages with rank 0 get an empty Sequential so that indices (and state-dict names) stay per stage
        stages = list(zip(encoder_features, ranks, strict=True))
        self.down = nn.ModuleList(nn.Conv3d(c, r, 1) if r else nn.Sequential() for c, r in stages)
        self.up = nn.ModuleList(nn.Conv3d(r, c, 1) if r else nn.Sequential() for c, r in stages)
        self.act = nn.LeakyReLU(0.01)
        for up in self.up:
            if isinstance(up, nn.Conv3d):
                # zero residual at start: the new head first sees exactly the frozen features
                nn.init.zeros_(up.weight)
                if up.bias is not None:
                    nn.init.zeros_(up.bias)

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [s if not r else s + up(self.act(down(s)))
                for s, r, down, up in zip(skips, self.ranks, self.down, self.up, strict=True)]


def adapter_ranks(encoder_features: Sequence[int], reduction: int) -> tuple[int, ...]:
    """Bottleneck widths per stage: the stage's channels / ``reduction`` (at least 1)."""
    if reduction < 1:
        raise ModelError(f"adapter reduction must be an integer >= 1, got {reduction}")
    return tuple(max(1, int(c) // reduction) for c in encoder_features)


@dataclass(frozen=True)
class NetConfig:
    in_channels: int
    encoder_features: tuple[int, ...]
    heads: tuple[tuple[str, Widths, int], ...]  # name, widths, output channels


class MultiHeadNet(nn.Module):
    """General encoder + named decoder heads (``heads`` is a ModuleDict in declaration order)."""

    def __init__(self, in_channels: int, encoder_features: Sequence[int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder = Encoder(in_channels, encoder_features)
        self.heads = nn.ModuleDict()
        self.supports = nn.ModuleDict()  # supported head -> its Supporting fusion
        self.support_of: dict[str, tuple[str, ...]] = {}
        self.adapters = nn.ModuleDict()  # head -> its Adapter over the encoder's features

    @property
    def divisor(self) -> int:
        """Spatial sizes fed to the net must be multiples of this."""
        return int(2 ** (len(self.encoder.features) - 1))

    def add_head(self, name: str, out_channels: int, widths: Widths | None = None,
                 supports: Sequence[str] = (), adapter: Sequence[int] | None = None) -> Decoder:
        """A new decoder head; ``supports`` names existing heads whose logits it fuses with its own,
        ``adapter`` gives the bottleneck width per encoder stage of its own :class:`Adapter`."""
        if name in self.heads:
            raise ModelError(f"head {name!r} exists already")
        missing = [s for s in supports if s not in self.heads]
        if missing:
            # supporters must exist first: this also rules out cycles
            raise ModelError(f"head {name!r}: supporting heads {missing} do not exist (yet); heads: {list(self.heads)}")
        decoder = Decoder(self.encoder.features, widths or default_widths(self.encoder.features), out_channels)
        self.heads[name] = decoder
        if supports:
            self.supports[name] = Supporting(out_channels, sum(self.head(s).out_channels for s in supports))
            self.support_of[name] = tuple(supports)
        if adapter is not None:
            self.adapters[name] = Adapter(self.encoder.features, adapter)
        return decoder

    def head(self, name: str) -> Decoder:
        if name not in self.heads:
            raise ModelError(f"no head {name!r}; heads: {list(self.heads)}")
        return cast(Decoder, self.heads[name])

    def head_modules(self, name: str) -> dict[str, nn.Module]:
        """Everything that belongs to one head (decoder, fusion, adapter) by ModuleDict name; these
        train with the head and nothing else reads them."""
        out: dict[str, nn.Module] = {"heads": self.head(name)}
        if name in self.supports:
            out["supports"] = self.supports[name]
        if name in self.adapters:
            out["adapters"] = self.adapters[name]
        return out

    def head_inputs(self, name: str, skips: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """The encoder features as ``name``'s decoder reads them (through its adapter, if any)."""
        if name in self.adapters:
            adapted: list[torch.Tensor] = self.adapters[name](skips)
            return adapted
        return skips

    def config(self) -> NetConfig:
        return NetConfig(self.in_channels, self.encoder.features,
                         tuple((n, self.head(n).widths, self.head(n).out_channels) for n in self.heads))

    def head_logits(self, name: str, skips: Sequence[torch.Tensor], cache: dict[str, torch.Tensor] | None = None,
                    collect: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One head's logits on encoder features, its supporters run first (cached in ``cache``);
        ``collect`` receives the head's decoder level outputs (see :meth:`Decoder.features`).

        Supporters run without gradients: a supported head learns to read them, never to change them.
        """
        cache = {} if cache is None else cache
        if name in cache and collect is None:
            return cache[name]
        support: list[torch.Tensor] = []
        if name in self.support_of:
            with torch.no_grad():
                support = [self.head_logits(s, skips, cache).detach() for s in self.support_of[name]]
        out: torch.Tensor = self.heads[name](self.head_inputs(name, skips), collect)
        if support:
            out = self.supports[name](out, support)
        cache[name] = out
        return out

    def forward_heads(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The encoder once, then each named head (all heads when ``names`` is None); supporters of a
        named head run too (their outputs are not returned unless named)."""
        chosen = list(self.heads) if names is None else list(names)
        skips = self.encoder(x)
        cache: dict[str, torch.Tensor] = {}
        return {name: self.head_logits(name, skips, cache) for name in chosen}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All heads' outputs concatenated along channels (the form sliding windows accumulate)."""
        return torch.cat(list(self.forward_heads(x).values()), dim=1)


class HeadSubset(nn.Module):
    """A view of a MultiHeadNet that runs only some heads and concatenates their outputs."""

    def __init__(self, net: MultiHeadNet, names: Sequence[str]) -> None:
        super().__init__()
        missing = [n for n in names if n not in net.heads]
        if missing:
            raise ModelError(f"unknown head(s) {missing}; heads: {list(net.heads)}")
        self.net = net
        self.names = list(names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(self.net.forward_heads(x, self.names).values()), dim=1)


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_flops(module: nn.Module, run: torch.Tensor | None = None, call: object = None) -> int:
    """Multiply-accumulates x 2 of every Conv3d/ConvTranspose3d of ``module`` while ``call()`` runs."""
    total = [0]

    def conv_hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(mod, nn.ConvTranspose3d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
            total[0] += 2 * inputs[0].numel() // inputs[0].shape[0] * mod.out_channels * k
        elif isinstance(mod, nn.Conv3d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
            total[0] += 2 * output.numel() // output.shape[0] * mod.in_channels * k

    handles = [m.register_forward_hook(conv_hook) for m in module.modules()
               if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    try:
        with torch.no_grad():
            if callable(call):
                call()
            elif run is not None:
                module(run)
    finally:
        for h in handles:
            h.remove()
    return total[0]
