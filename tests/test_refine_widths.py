"""refine_widths: the one integer refinement onto a cost target (match_cost, lwdna and slimming use it)."""

import numpy as np
import pytest

from widthtune.models.cost import CostModel
from widthtune.models.match import COST_TOLERANCE, divisor_moves, refine_widths
from widthtune.models.widths import Widths, smallest_width

RESNET = "resnet_cifar:depth=8"
VGG8 = "vgg_cifar:depth=11,width=0.25,divisor=8"


@pytest.fixture(scope="module", params=[RESNET, VGG8])
def cost_model(request):
    return CostModel.from_spec(request.param)


def bounds(cost_model):
    space = cost_model.space
    lower = np.asarray([smallest_width(g) for g in space])
    upper = np.asarray(Widths.base(space).scale(2.0).values)
    return lower, upper, np.asarray([g.divisor for g in space])


def random_widths(rng, lower, upper, steps):
    return lower + steps * rng.integers(0, (upper - lower) // steps + 1)


def test_moves_are_single_steps_and_pairs_ordered_by_the_first_group_they_move():
    moves = divisor_moves(np.asarray([2, 3]), max_steps=1)
    assert {tuple(m) for m in moves} == {(2, 0), (-2, 0), (0, 3), (0, -3), (2, -3), (-2, 3)}
    assert len(moves) == 6 and list(np.argmax(moves != 0, axis=1)) == [0, 0, 0, 0, 1, 1]
    assert {tuple(m) for m in divisor_moves(np.asarray([2, 3]), pairs=False)} == {
        (2, 0),
        (-2, 0),
        (0, 3),
        (0, -3),
    }
    far = {tuple(m) for m in divisor_moves(np.asarray([1, 1]), max_steps=3)}
    assert {(3, 0), (0, -3), (1, -3), (-1, 3)} <= far and (3, -3) not in far


@pytest.mark.parametrize("seed", range(6))
def test_lands_within_tolerance_inside_the_bounds_on_whole_steps(cost_model, seed):
    rng = np.random.default_rng(seed)
    lower, upper, steps = bounds(cost_model)
    start = random_widths(rng, lower, upper, steps)
    target = float(cost_model.cost(random_widths(rng, lower, upper, steps)))  # reachable by construction
    refined = refine_widths(start, target, cost_model, lower=lower, upper=upper, max_steps=8)
    assert abs(refined.cost - target) <= COST_TOLERANCE * target
    assert (lower <= refined.values).all() and (refined.values <= upper).all()
    assert ((refined.values - start) % steps == 0).all()
    assert refined.cost == pytest.approx(float(cost_model.cost(refined.values)))


@pytest.mark.parametrize("seed", range(6))
def test_never_worse_and_stops_only_where_no_move_helps(cost_model, seed):
    rng = np.random.default_rng(100 + seed)
    _, upper, steps = bounds(cost_model)
    lower = np.asarray(
        Widths.base(cost_model.space).values
    )  # tight bounds: the tolerance is often out of reach
    start = random_widths(rng, lower, upper, steps)
    target = float(cost_model.cost(start)) * rng.uniform(0.7, 1.3)
    refined = refine_widths(start, target, cost_model, tolerance=1e-6, lower=lower, upper=upper)
    error = abs(refined.cost - target)
    assert error <= abs(float(cost_model.cost(start)) - target)
    if error > 1e-6 * target:  # a local optimum: no single step or pair inside the bounds comes closer
        candidates = refined.values + divisor_moves(steps)
        legal = candidates[((candidates >= lower) & (candidates <= upper)).all(axis=1)]
        assert (np.abs(cost_model.cost(legal) - target) >= error).all()


def test_already_within_tolerance_moves_nothing(cost_model):
    lower, upper, _ = bounds(cost_model)
    base = np.asarray(Widths.base(cost_model.space).values)
    target = float(cost_model.cost(base)) * 1.004
    refined = refine_widths(base, target, cost_model, lower=lower, upper=upper)
    assert refined.moves == 0 and (refined.values == base).all()


def test_under_target_never_exceeds_the_target(cost_model):
    lower, upper, steps = bounds(cost_model)
    for seed in range(4):
        rng = np.random.default_rng(200 + seed)
        start = lower.copy()
        target = float(cost_model.cost(random_widths(rng, lower, upper, steps))) + 0.5
        refined = refine_widths(
            start, target, cost_model, tolerance=0.0, lower=lower, upper=upper, under_target=True
        )
        assert refined.cost <= target and refined.moves > 0


def test_priority_picks_among_the_moves_that_help():
    cost_model = CostModel.from_spec(RESNET)
    lower, upper, _ = bounds(cost_model)
    single_steps = divisor_moves(np.ones(len(lower), dtype=int), pairs=False)
    ups = single_steps[(single_steps > 0).any(axis=1)]
    favourite = int(
        np.argmax(ups[np.argmin(cost_model.cost(lower + ups))])
    )  # the cheapest step: not closest-first
    wanted = lower.copy()
    wanted[favourite] = upper[favourite]
    target = float(cost_model.cost(wanted))

    def prefer_favourite(values, candidates):
        return (candidates - values)[:, favourite].astype(float)

    refined = refine_widths(
        lower,
        target,
        cost_model,
        tolerance=0.0,
        lower=lower,
        upper=upper,
        pairs=False,
        under_target=True,
        priority=prefer_favourite,
    )
    assert (refined.values == wanted).all() and refined.cost == target
    assert refined.moves == upper[favourite] - lower[favourite]
    plain = refine_widths(
        lower, target, cost_model, tolerance=0.0, lower=lower, upper=upper, pairs=False, under_target=True
    )
    assert not (plain.values == wanted).all()  # closest-first takes other groups on the way


def test_bad_input_names_the_argument(cost_model):
    lower, upper, steps = bounds(cost_model)
    with pytest.raises(ValueError, match=r"values: .* is not within lower"):
        refine_widths(lower - steps, 1e6, cost_model, lower=lower, upper=upper)
    with pytest.raises(ValueError, match="values: 1 widths given"):
        refine_widths(lower[:1], 1e6, cost_model, lower=lower[:1], upper=upper[:1])
    with pytest.raises(ValueError, match=r"target: .* choose a cost > 0"):
        refine_widths(lower, 0.0, cost_model, lower=lower, upper=upper)
    with pytest.raises(ValueError, match=r"steps: .* one positive integer step per group"):
        refine_widths(lower, 1e6, cost_model, lower=lower, upper=upper, steps=np.zeros(len(lower), dtype=int))
