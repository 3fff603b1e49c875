"""Width transfer arithmetic: projections per family, stacking rules on a depth change, cost matching, overhead."""

import math
import random

import pytest

from widthtune.models.cost import CostModel
from widthtune.models.registry import channel_space, materialize, resolve_options
from widthtune.models.widths import Widths
from widthtune.search_spaces.projections import (
    EXTRAPOLATIONS,
    Projection,
    ProjectionError,
    extrapolate,
    overhead_saved,
    paper_projections,
    projection_space,
    transfer_widths,
)


def _saved_percent(source, target):
    projection = Projection.between(source, target)
    return math.floor(100 * overhead_saved(projection.overhead_ratio(int(target[2]))) + 1e-9)


@pytest.mark.parametrize(
    ("source", "saved"),
    [
        ((0.312, 4, 320, 1.0), 96),
        ((0.707, 4, 320, 1.0), 83),
        ((1.732, 1, 320, 1.0), 75),
        ((1.732, 4, 64, 1.0), 96),
        ((1.732, 4, 160, 1.0), 75),
        ((1.732, 4, 320, 0.05), 95),
        ((1.732, 4, 320, 0.10), 90),
    ],
)
def test_overhead_formula_reproduces_the_papers_savings(source, saved):
    assert _saved_percent(source, (1.732, 4, 320, 1.0)) == saved


def test_compound_projection_is_320_times_cheaper():
    projection = Projection.between((0.707, 1, 160, 0.1), (1.414, 2, 320, 1.0))
    assert 1 / projection.overhead_ratio(320) == pytest.approx(320, rel=1e-3)


def test_paper_grids_cover_the_four_axes_and_the_compound_tuples():
    for study, count in (
        ("width", 6),
        ("depth", 4),
        ("resolution", 4),
        ("data_fraction", 5),
        ("compound", 4),
    ):
        projections, resolution = paper_projections(study)
        assert len(projections) == count and resolution == 320
        assert projections[-1].overhead_ratio(resolution) == pytest.approx(1.0, rel=1e-3)  # the target itself
    compound, _ = paper_projections("compound")
    assert compound[0].width_mult == pytest.approx(0.312 / 1.414) and compound[0].data_fraction == 0.05
    with pytest.raises(ProjectionError, match="'height' is not one of"):
        paper_projections("height")


def test_projection_grid_is_a_tune_grid_of_round_tripping_projections():
    projections, _ = paper_projections("compound")
    space = projection_space(projections)["transfer.projection"]
    assert list(space) == ["grid_search"] and len(space["grid_search"]) == 4
    assert [Projection.from_mapping(p) for p in space["grid_search"]] == projections


def test_epoch_ratio_scales_the_formula():
    assert Projection(0.5).overhead_ratio(32, epoch_ratio=0.5) == pytest.approx(0.125)


def test_resnet_cifar_projection_changes_width_depth_and_resolution():
    proxy = Projection(0.5, 0.5, 16, 0.25).model("resnet_cifar:depth=56")
    options = resolve_options(proxy)
    assert options["depth"] == 32 and options["width"] == 0.5 and options["resolution"] == 16  # 9 blocks -> 5
    assert channel_space(proxy)["stage1.stream"].base == 8
    assert Projection(1, 0.25).model("resnet_cifar:depth=56").kwargs["depth"] == 20  # ceil(9 / 4) = 3 blocks


def test_projection_data_keeps_the_dataset_and_scales_the_fraction():
    data = Projection(1, 1, 8, 0.25).data({"name": "digits", "resolution": 16, "fraction": 0.8})
    assert data == {"name": "digits", "resolution": 8, "fraction": pytest.approx(0.2)}
    assert Projection().data({"name": "digits"}) == {"name": "digits"}


def _blocks_per_stage(space):
    counts = {}
    for group in space:
        if group.block is not None:
            counts[group.stage] = max(counts.get(group.stage, 0), group.block)
    return counts


def test_mobilenet_depth_projection_skips_the_first_and_last_stage():
    target = "mobilenet_v2:width=0.5"
    proxy = Projection(1, 0.5).model(target)
    before = _blocks_per_stage(channel_space(target))
    after = _blocks_per_stage(channel_space(proxy))
    # stage 1 (t=1) has no expand group; stages 2..6 halve (rounded up), stage 7 keeps its single block
    assert before == {2: 2, 3: 3, 4: 4, 5: 3, 6: 3, 7: 1}
    assert after == {2: 1, 3: 2, 4: 2, 5: 2, 6: 2, 7: 1}
    materialize(proxy)(__import__("torch").zeros(1, 3, 32, 32))


def test_imagenet_resnet_depth_projection_sets_blocks_per_stage():
    proxy = Projection(0.5, 0.5, 64).model("resnet:depth=50,num_classes=10")
    assert proxy.kwargs["layers"] == "2-2-3-2" and proxy.kwargs["block"] == "bottleneck"


def test_families_without_the_axis_are_refused_by_name():
    with pytest.raises(ProjectionError, match=r"projection\.depth: vgg_cifar models have no depth option"):
        Projection(1, 0.5).model("vgg_cifar:depth=16")
    with pytest.raises(ProjectionError, match=r"projection\.width: torchvision models have no width option"):
        Projection(0.5).model("torchvision:resnet18")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"width": 0}, "projection.width: 0 is not allowed"),
        ({"depth": -1}, "projection.depth: -1 is not allowed"),
        ({"resolution": 2}, "projection.resolution: 2 is not allowed"),
        ({"data_fraction": 1.5}, "projection.data_fraction: 1.5 is not allowed"),
        ({"height": 2}, "projection.height: unknown axis"),
        ([0.5, 1], "write {width, depth, resolution, data_fraction}"),
    ],
)
def test_bad_projections_name_the_axis(values, message):
    with pytest.raises(ProjectionError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Projection.from_mapping(values)


def _mid_ratios(proxy_spec, per_block):
    space = channel_space(proxy_spec)
    ratios = {g.name: per_block.get(g.block, 1.0) if g.role == "mid" else 0.75 for g in space}
    return Widths.from_ratios(space, ratios)


def test_stacking_rules_append_blocks_to_a_three_block_proxy_stage():
    proxy = _mid_ratios("resnet_cifar:depth=20,width=2", {1: 0.5, 2: 1.0, 3: 1.5})  # 3 blocks per stage
    target = channel_space("resnet_cifar:depth=56")  # 9 blocks per stage
    average = extrapolate(proxy, target, "stack-average-block")
    last = extrapolate(proxy, target, "stack-last-block")
    for stage in (1, 2, 3):
        base = target[f"stage{stage}.block1.mid"].base
        assert average[f"stage{stage}.stream"] == pytest.approx(0.75 * base)  # streams map by name
        for rule in (average, last):  # the proxy's own three blocks stay as they are
            profile = [rule[f"stage{stage}.block{block}.mid"] / base for block in (1, 2, 3)]
            assert profile == pytest.approx([0.5, 1.0, 1.5])
        for block in range(4, 10):  # six appended blocks
            assert average[f"stage{stage}.block{block}.mid"] == pytest.approx(1.25 * base)  # mean of 2..3
            assert last[f"stage{stage}.block{block}.mid"] == pytest.approx(1.5 * base)  # the last block


def test_a_one_block_proxy_stage_stacks_that_block_under_both_rules():
    proxy = _mid_ratios("resnet_cifar:depth=8", {1: 0.5})
    target = channel_space("resnet_cifar:depth=20")
    for rule in EXTRAPOLATIONS:
        shape = extrapolate(proxy, target, rule)
        for block in (1, 2, 3):
            assert shape[f"stage2.block{block}.mid"] == pytest.approx(0.5 * target["stage2.block1.mid"].base)


@pytest.mark.parametrize(
    ("target", "projection"),
    [
        ("resnet_cifar:depth=56", Projection(1.0, 0.34)),  # 9 blocks per stage -> 4 built, not 3.06
        ("resnet_cifar:depth=56", Projection(1.0, 0.5, 16)),  # 9 -> 5
        ("resnet:depth=50,resolution=64,num_classes=10", Projection(1.0, 0.5)),  # 3-4-6-3 -> 2-2-3-2
        ("resnet_cifar:depth=20", Projection(0.5, 0.34, 16)),  # 3 -> 2
    ],
)
def test_overhead_formula_prices_the_blocks_the_proxy_builds(target, projection):
    resolution = int(resolve_options(target)["resolution"])
    target_macs = CostModel.from_spec(target).base().macs
    proxy_macs = CostModel.from_spec(projection.model(target)).base().macs
    measured = proxy_macs / target_macs
    built = projection.overhead_ratio(resolution, depth_ratio=projection.built_depth_ratio(target))
    assert built == pytest.approx(measured, rel=0.12)
    nominal = projection.overhead_ratio(resolution)  # the multiplier alone understates the proxy
    assert abs(built - measured) < abs(nominal - measured)
    assert nominal < measured


def test_equal_depths_map_blocks_one_to_one_under_both_rules():
    proxy = _mid_ratios("resnet_cifar:depth=20,width=0.5", {1: 0.5, 2: 1.0, 3: 1.5})
    target = channel_space("resnet_cifar:depth=20")
    for rule in EXTRAPOLATIONS:
        shape = extrapolate(proxy, target, rule)
        assert shape["stage2.block3.mid"] == pytest.approx(1.5 * target["stage2.block3.mid"].base)


@pytest.mark.parametrize(
    ("target", "projection"),
    [
        ("resnet_cifar:depth=56", Projection(0.5, 0.34, 16, 0.1)),
        ("mobilenet_v2:width=0.5", Projection(0.5, 0.5, 16)),
        ("resnet:depth=18,resolution=64,num_classes=10", Projection(0.5, 0.5, 32)),
        ("vgg_cifar:depth=16", Projection(0.5, 1, 16)),
    ],
)
@pytest.mark.parametrize("rule", EXTRAPOLATIONS)
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_extrapolated_widths_meet_the_target_cost_within_half_a_percent(target, projection, rule, ratio):
    proxy_space = channel_space(projection.model(target))
    rng = random.Random(f"{target}{rule}{ratio}")
    proxy = Widths.from_ratios(proxy_space, {g.name: rng.uniform(0.3, 1.5) for g in proxy_space})
    cost_model = CostModel.from_spec(target)
    goal = ratio * cost_model.base().macs
    matched = transfer_widths(proxy, cost_model, goal, rule=rule)
    assert abs(matched.relative_error) <= 0.005
    assert matched.widths.space == cost_model.space
    assert abs(cost_model.cost(matched.widths) - goal) <= 0.005 * goal


def test_unknown_rule_and_foreign_family_are_refused():
    proxy = Widths.base(channel_space("vgg_cifar:depth=11"))
    with pytest.raises(ProjectionError, match="extrapolation: 'stack-first' is not allowed"):
        extrapolate(proxy, channel_space("vgg_cifar:depth=16"), "stack-first")
    with pytest.raises(ProjectionError, match="the proxy has no"):
        extrapolate(proxy, channel_space("resnet_cifar:depth=8"))
