"""RepVGG (Ding et al., 2021): multi-branch blocks for training, one 3x3 conv per block once reparameterised.

A training-time block sums a 3x3 conv + BN, a 1x1 conv + BN and, where the base architecture allows it
(the block's base input and output widths are equal and its stride is 1), an identity BN; then ReLU.
`reparameterize` folds every BN into its conv, pads the 1x1 kernel to 3x3 and writes the identity as a
3x3 kernel, so each block becomes one 3x3 conv with bias -- the plain network that ships.

Channel groups. The deployed network has no residual adds, so every block's output width is its own group
(`stem` for stage 0, then `stageS.blockB`): a group owns the block's convs' and BNs' outputs and the next
block's (or the classifier's) inputs. At widths other than the base a block's input and output may differ
where the base had an identity branch; the identity branch is then kept and routes by position: output
channel c carries input channel c for c < min(in, out), channels beyond the input are zero before the
identity BN (so the branch adds that BN's shift there), inputs beyond the output are dropped. The module
structure therefore depends on the options only, never on the widths (state dicts of any two width vectors
have the same keys), the identity still merges exactly (a 3x3 kernel with a 1 at (c, c, centre) for
c < min(in, out)), and no two groups are coupled. The identity branch is a training aid; on the trained
form, weight inheritance between groups pruned to different channel sets is exact only after merging.

Cost. `Family.deploy` is `reparameterize`, so the cost model traces the merged network: MACs are its 3x3
convs and the linear, parameters its conv weights and biases and the linear. The identity choice above
therefore never changes a cost.

Configurations (a, b multiply 64, 128, 256 and 512; stage 0 has min(64, 64a) channels):
A0 (0.75, 2.5), A1 (1, 2.5), A2 (1.5, 2.75) with 1, 2, 4, 14, 1 blocks; B0 (1, 2.5), B1 (2, 4), B2 (2.5, 5),
B3 (3, 5) with 1, 4, 6, 16, 1 blocks. `stem=imagenet` downsamples in stage 0 and at every stage's first block
(224 px -> 7 px); `stem=cifar` keeps stride 1 in stage 0 and stage 1 (32 px -> 4 px), as CIFAR ResNets drop
the ImageNet stem's stride and max-pool.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from widthtune.models.catalog import REPVGG
from widthtune.models.initialization import kaiming_init
from widthtune.models.space import ChannelGroup, ChannelSpace, Member
from widthtune.models.widths import scaled_width

DEFAULTS = REPVGG.defaults
A_BLOCKS = (1, 2, 4, 14, 1)
B_BLOCKS = (1, 4, 6, 16, 1)
# variant -> (blocks per stage 0..4, a, b)
VARIANTS: dict[str, tuple[tuple[int, ...], float, float]] = {
    "A0": (A_BLOCKS, 0.75, 2.5),
    "A1": (A_BLOCKS, 1.0, 2.5),
    "A2": (A_BLOCKS, 1.5, 2.75),
    "B0": (B_BLOCKS, 1.0, 2.5),
    "B1": (B_BLOCKS, 2.0, 4.0),
    "B2": (B_BLOCKS, 2.5, 5.0),
    "B3": (B_BLOCKS, 3.0, 5.0),
}
STEMS = ("imagenet", "cifar")


@dataclass(frozen=True)
class BlockLayout:
    """One block: its module path, its output group, the group it reads (None: the image), stride, identity."""

    path: str
    group: str
    source: str | None
    stage: int
    block: int
    base: int
    stride: int
    identity: bool


def stage_widths(options: Mapping[str, Any]) -> tuple[int, ...]:
    """Base widths of stages 0..4: min(64, 64a), 64a, 128a, 256a, 512b, each times `width` on the divisor."""
    variant = str(options["variant"]).upper()
    if variant not in VARIANTS:
        raise ValueError(f"repvgg: variant={options['variant']!r}; choose one of {', '.join(VARIANTS)}")
    _, a, b = VARIANTS[variant]
    raw = (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))
    return tuple(scaled_width(w, options["width"], options["divisor"]) for w in raw)


def layout(options: Mapping[str, Any]) -> list[BlockLayout]:
    """Every block in forward order."""
    widths = stage_widths(options)
    stem = str(options["stem"]).lower()
    if stem not in STEMS:
        raise ValueError(f"repvgg: stem={options['stem']!r}; choose one of {', '.join(STEMS)}")
    first_strides = (1, 1, 2, 2, 2) if stem == "cifar" else (2, 2, 2, 2, 2)
    blocks: list[BlockLayout] = []
    source, source_width = None, options["in_channels"]
    for stage, count in enumerate(VARIANTS[str(options["variant"]).upper()][0]):
        for index in range(count):
            stride = first_strides[stage] if index == 0 else 1
            path = "stage0" if stage == 0 else f"stage{stage}.{index}"
            group = "stem" if stage == 0 else f"stage{stage}.block{index + 1}"
            identity = stride == 1 and source_width == widths[stage]
            blocks.append(BlockLayout(path, group, source, stage, index + 1, widths[stage], stride, identity))
            source, source_width = group, widths[stage]
    return blocks


def channel_space(options: Mapping[str, Any]) -> ChannelSpace:
    """One group per block: its branches' outputs (also the merged conv's) and what reads them next."""
    blocks = layout(options)
    groups = []
    for i, blk in enumerate(blocks):
        members = [
            Member(f"{blk.path}.conv"),
            Member(f"{blk.path}.bn"),
            Member(f"{blk.path}.conv1x1"),
            Member(f"{blk.path}.bn1x1"),
        ]
        if blk.identity:
            members.append(Member(f"{blk.path}.bn_identity"))
        if i + 1 < len(blocks):
            members += [
                Member(f"{blocks[i + 1].path}.conv", "in"),
                Member(f"{blocks[i + 1].path}.conv1x1", "in"),
            ]
        else:
            members.append(Member("classifier", "in"))
        groups.append(
            ChannelGroup(
                blk.group,
                blk.base,
                tuple(members),
                min=options["min_width"],
                divisor=options["divisor"],
                stage=blk.stage,
                block=None if blk.stage == 0 else blk.block,
                role="stem" if blk.stage == 0 else "conv",
            )
        )
    return ChannelSpace(tuple(groups))


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The identity by position: cut extra input channels, zero-fill missing ones."""
    extra = channels - x.shape[1]
    if extra == 0:
        return x
    if extra < 0:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, extra))


class RepVGGBlock(nn.Module):
    """Training form: BN(3x3 conv) + BN(1x1 conv) [+ BN(identity)], then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, identity: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.conv1x1 = nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)
        self.bn1x1 = nn.BatchNorm2d(out_ch)
        self.bn_identity = nn.BatchNorm2d(out_ch) if identity else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x)) + self.bn1x1(self.conv1x1(x))
        if self.bn_identity is not None:
            out = out + self.bn_identity(match_channels(x, out.shape[1]))
        return self.relu(out)

    @torch.no_grad()
    def merged(self) -> DeployedBlock:
        """The one 3x3 conv with bias that computes this block's pre-ReLU sum under the BNs' running statistics."""
        scale, bias = _bn_affine(self.bn)
        kernel = self.conv.weight * scale.reshape(-1, 1, 1, 1)
        scale1, bias1 = _bn_affine(self.bn1x1)
        kernel[:, :, 1, 1] += self.conv1x1.weight[:, :, 0, 0] * scale1.reshape(-1, 1)  # the 1x1 at the centre
        bias = bias + bias1
        if self.bn_identity is not None:
            scale_id, bias_id = _bn_affine(self.bn_identity)
            kept = torch.arange(min(self.conv.in_channels, self.conv.out_channels), device=kernel.device)
            kernel[kept, kept, 1, 1] += scale_id[kept]  # input channel c -> output channel c
            bias = bias + bias_id
        conv = nn.utils.skip_init(
            nn.Conv2d,
            self.conv.in_channels,
            self.conv.out_channels,
            3,
            self.conv.stride,
            1,
            bias=True,
            device=kernel.device,
            dtype=kernel.dtype,
        )
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        return DeployedBlock(conv)


class DeployedBlock(nn.Module):
    """Deployed form: one 3x3 conv with bias, then ReLU (its conv sits at the training block's 3x3 path)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = scale x + shift per channel: gamma / std and beta - mean x gamma / std."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class RepVGG(nn.Module):
    """Stage 0 (one block), stages 1-4 (sequences of blocks), global average pool, one linear."""

    def __init__(self, widths: Mapping[str, int], options: Mapping[str, Any]) -> None:
        super().__init__()
        in_ch = options["in_channels"]
        stages: dict[int, list[nn.Module]] = {}
        for blk in layout(options):
            out_ch = widths[blk.group]
            stages.setdefault(blk.stage, []).append(RepVGGBlock(in_ch, out_ch, blk.stride, blk.identity))
            in_ch = out_ch
        self.stage0 = stages[0][0]
        for stage in range(1, 5):
            self.add_module(f"stage{stage}", nn.Sequential(*stages[stage]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, options["num_classes"])
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def reparameterize(model: nn.Module) -> nn.Module:
    """A copy of `model` with every training-time block merged into one 3x3 conv: what ships (eval-equivalent)."""
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock | DeployedBlock)]
    if not blocks:
        raise ValueError(f"reparameterize: {type(model).__name__} has no RepVGG blocks to merge")
    # deepcopy takes what its memo already holds as the copy: each training block's copy is its merge.
    memo: dict[int, Any] = {id(m): m.merged().train(m.training) for m in blocks if isinstance(m, RepVGGBlock)}
    return copy.deepcopy(model, memo)


def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
    """A fresh training-form RepVGG at the given widths."""
    return RepVGG(widths, options)
