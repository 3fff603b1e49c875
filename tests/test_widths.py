"""Width vectors: validation, scaling with divisor rounding, and the versioned JSON artifact."""

import json

import pytest

from widthtune.models import Widths, WidthsError, channel_space
from widthtune.models.artifact import FORMAT, load_widths, make_artifact
from widthtune.models.cost import CostModel

SPEC = "mobilenet_v2:width=0.5"


@pytest.fixture(scope="module")
def space():
    return channel_space(SPEC)


def test_widths_must_name_exactly_the_groups(space):
    base = Widths.base(space).as_dict()
    with pytest.raises(WidthsError, match="missing groups stem"):
        Widths.from_mapping(space, {k: v for k, v in base.items() if k != "stem"})
    with pytest.raises(WidthsError, match="unknown groups bogus"):
        Widths.from_mapping(space, {**base, "bogus": 8})


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "positive"), (-8, "positive"), (12, "multiple of its divisor 8"), (8.5, "integer"), ("8", "number")],
)
def test_bad_width_values_name_the_group(space, value, message):
    with pytest.raises(WidthsError, match=message) as error:
        Widths.from_mapping(space, {**Widths.base(space).as_dict(), "stage3.stream": value})
    assert "stage3.stream" in str(error.value)


def test_scale_rounds_to_divisor_and_clips_at_minimum(space):
    base = Widths.base(space)
    small = base.scale(0.001)
    assert all(w == 8 for w in small.values)  # min_width 8
    grown = base.scale(1.37)
    for group, width in zip(space, grown.values, strict=True):
        assert width % group.divisor == 0
        assert abs(width - group.base * 1.37) <= group.divisor / 2
    assert grown.ratio_to_base()["head"] == pytest.approx(grown["head"] / space["head"].base)
    clipped = grown.clip(high={"head": 100})
    assert clipped["head"] == 104 and clipped["stem"] == grown["stem"]


def test_from_ratios_accepts_one_multiplier_or_one_per_group(space):
    assert Widths.from_ratios(space, 1.0) == Widths.base(space)
    ratios = dict.fromkeys(space.names, 2.0)
    assert Widths.from_ratios(space, ratios) == Widths.base(space).scale(2.0)


def test_artifact_roundtrip_keeps_spec_widths_cost_and_provenance(space, tmp_path):
    widths = Widths.base(space).scale(0.75)
    artifact = make_artifact(SPEC, widths, method="uniform", provenance={"seed": 3, "trial": "t1"})
    path = artifact.save(tmp_path / "widths.json")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == 1
    assert data["cost"]["macs"] == CostModel.from_spec(SPEC).evaluate(widths).macs
    loaded = load_widths(path)
    assert loaded.widths == widths and loaded.method == "uniform" and loaded.provenance["seed"] == 3
    assert str(loaded.spec) == str(artifact.spec) and "stem=cifar" in str(loaded.spec)


def test_loading_rejects_wrong_files(space, tmp_path):
    with pytest.raises(WidthsError, match="does not exist"):
        load_widths(tmp_path / "nope.json", SPEC)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(WidthsError, match="not valid JSON"):
        load_widths(tmp_path / "bad.json", SPEC)
    (tmp_path / "future.json").write_text(
        json.dumps({"format": FORMAT, "version": 99, "model": SPEC, "widths": {}})
    )
    with pytest.raises(WidthsError, match="version 99"):
        load_widths(tmp_path / "future.json")
    (tmp_path / "plain.json").write_text(json.dumps(Widths.base(space).as_dict()))
    assert load_widths(tmp_path / "plain.json", SPEC).widths == Widths.base(space)
    with pytest.raises(WidthsError, match="name the model"):
        load_widths(tmp_path / "plain.json")


def test_numpy_numbers_are_accepted(space):
    import numpy as np

    mapping = {name: np.int64(w) for name, w in Widths.base(space).as_dict().items()}
    widths = Widths.from_mapping(space, mapping)
    assert widths == Widths.base(space) and all(type(v) is int for v in widths.values)


def test_widths_stop_at_64x_the_base_and_cost_matching_stays_inside(space):
    from widthtune.models.match import CostTargetError, match_cost
    from widthtune.models.widths import MAX_WIDTH_RATIO, largest_width

    group = space["stem"]
    assert largest_width(group) == MAX_WIDTH_RATIO * group.base  # the base is a multiple of the divisor 8
    with pytest.raises(
        WidthsError, match=rf"'stem' is 1000000000, above its maximum {64 * group.base} \(64x"
    ):
        Widths.from_mapping(space, {**Widths.base(space).as_dict(), "stem": 1e9})
    Widths.from_mapping(space, {**Widths.base(space).as_dict(), "stem": largest_width(group)})
    cost_model = CostModel.from_spec(SPEC)
    wide = {**Widths.base(space).as_dict(), "stem": 4 * group.base}  # a shape that would pass 64x first
    top = cost_model.evaluate(Widths.from_mapping(space, {g.name: largest_width(g) for g in space}))
    with pytest.raises(CostTargetError, match="at most 64x its base"):
        match_cost(wide, 2.0 * top.macs, cost_model)
    matched = match_cost(wide, 0.5 * top.macs, cost_model)
    assert all(w <= largest_width(g) for g, w in zip(space, matched.widths.values, strict=True))
