"""Channel groups of a residual network: stage streams coupled by adds, plus each block's inner widths."""

from __future__ import annotations

from collections.abc import Sequence

from widthtune.models.space import ChannelGroup, ChannelSpace, Member


def residual_space(
    *,
    blocks: Sequence[int],
    mids: Sequence[int],
    streams: Sequence[int],
    stem: int | None,
    convs_per_block: int,
    projection: bool,
    min_width: int,
    divisor: int,
) -> ChannelSpace:
    """Groups for torchvision-style module paths (conv1/bn1, layerS.B.convK/bnK, .downsample.0/1, fc).

    `stem=None` means the stem writes straight into stage 1's stream (no downsample in layer1.0), so
    they are one group. A block's first block of a stage has a downsample path when `projection`, except
    stage 1 when the stem is merged; without projection (option A) the shortcut has no parameters.
    """
    common = {"min": min_width, "divisor": divisor}
    stream_members: list[list[Member]] = [[Member("conv1"), Member("bn1")]]
    stream_members += [
        stream_members[0] if stem is None and s == 1 else [] for s in range(1, len(blocks) + 1)
    ]
    inner: list[list[ChannelGroup]] = [[] for _ in blocks]
    last = f"conv{convs_per_block}"
    for s, count in enumerate(blocks, start=1):
        for b in range(count):
            path = f"layer{s}.{b}"
            changes_shape = b == 0 and (s > 1 or stem is not None)
            source = stream_members[s - 1] if changes_shape else stream_members[s]
            source.append(Member(f"{path}.conv1", "in"))
            stream_members[s] += [Member(f"{path}.{last}"), Member(f"{path}.bn{convs_per_block}")]
            if changes_shape and projection:
                source.append(Member(f"{path}.downsample.0", "in"))
                stream_members[s] += [Member(f"{path}.downsample.0"), Member(f"{path}.downsample.1")]
            for k in range(1, convs_per_block):
                suffix = "mid" if convs_per_block == 2 else f"mid{k}"
                members = (
                    Member(f"{path}.conv{k}"),
                    Member(f"{path}.bn{k}"),
                    Member(f"{path}.conv{k + 1}", "in"),
                )
                inner[s - 1].append(
                    ChannelGroup(
                        f"stage{s}.block{b + 1}.{suffix}",
                        mids[s - 1],
                        members,
                        stage=s,
                        block=b + 1,
                        role=suffix,
                        **common,
                    )
                )
    stream_members[-1].append(Member("fc", "in"))
    groups = []
    if stem is not None:
        groups.append(ChannelGroup("stem", stem, tuple(stream_members[0]), stage=0, role="stem", **common))
    for s in range(1, len(blocks) + 1):
        groups.append(
            ChannelGroup(
                f"stage{s}.stream", streams[s - 1], tuple(stream_members[s]), stage=s, role="stream", **common
            )
        )
        groups += inner[s - 1]
    return ChannelSpace(tuple(groups))
