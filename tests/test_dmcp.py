"""DMCP: the Markov chain's expected width, the banded log cost loss, masked sub-networks, export at the target."""

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from widthtune.models.channel_scale import ChannelScaler, prefix_mask
from widthtune.models.cost import CostModel
from widthtune.models.inherit import channel_cuts, inherit_weights, pad_shortcuts
from widthtune.models.registry import canonical_spec, channel_space, materialize
from widthtune.models.widths import Widths
from widthtune.platform.config import ConfigError, validate_config
from widthtune.trainables import dmcp
from widthtune.trainables.adapter import find_widths

SPEC = "resnet_cifar:depth=8,resolution=8"


def brute_force_expectation(chain, keep):
    """Sum over every keep/refuse sequence of the chain of its probability x its width."""
    total = 0.0
    for decisions in itertools.product([0, 1], repeat=chain.count):
        probability, kept, alive = 1.0, 0, True
        for step, decision in enumerate(decisions):
            if not alive:  # after a refusal the chain stays refused: only the all-zero tail is possible
                if decision:
                    probability = 0.0
                continue
            probability *= keep[step] if decision else 1 - keep[step]
            kept += decision
            alive = bool(decision)
        total += probability * (chain.minimum + chain.size * kept)
    return total


def test_expected_width_equals_the_brute_force_expectation_over_the_chain():
    chain = dmcp.Chain(minimum=3, size=2, count=5)
    alphas = torch.tensor([1.5, -0.3, 0.8, 2.0, -1.0], dtype=torch.float64)
    keep = torch.sigmoid(alphas).tolist()
    assert float(dmcp.expected_width(chain, alphas)) == pytest.approx(brute_force_expectation(chain, keep))
    assert chain.total == 13


def test_chains_split_each_group_into_a_minimum_and_equal_sub_groups():
    space = channel_space(SPEC + ",divisor=2")
    widest = Widths.base(space).scale(1.5)
    for group, chain in zip(space, dmcp.chains(space, widest, 0.1, 9), strict=True):
        assert chain.total == widest[group.name]
        assert chain.size % group.divisor == 0 and chain.minimum % group.divisor == 0
        assert chain.minimum >= 0.1 * chain.total - group.divisor and chain.count <= 9


def test_cost_loss_is_zero_inside_the_band_and_its_gradient_points_toward_it():
    target = 1000.0
    for inside in (950.0, 975.0, 1000.0):
        assert float(dmcp.cost_loss(torch.tensor(inside), target, 0.95)) == 0.0
    below = torch.tensor(500.0, requires_grad=True)
    loss = dmcp.cost_loss(below, target, 0.95)
    loss.backward()
    assert float(loss) == pytest.approx(math.log(2)) and below.grad < 0  # descent raises the cost
    above = torch.tensor(2000.0, requires_grad=True)
    loss = dmcp.cost_loss(above, target, 0.95)
    loss.backward()
    assert float(loss) == pytest.approx(math.log(2000 / 950)) and above.grad > 0  # descent lowers it


def test_expected_cost_is_differentiable_through_the_cost_model():
    cost_model = CostModel.from_spec(SPEC)
    widths = torch.tensor([float(w) for w in Widths.base(cost_model.space).values], requires_grad=True)
    cost = cost_model.cost_tensor(widths.double())
    assert float(cost) == pytest.approx(cost_model.base().macs)
    cost.backward()
    step = np.zeros(len(cost_model.space))
    step[0] = 1.0
    base = np.asarray(Widths.base(cost_model.space).values, dtype=np.float64)
    finite = cost_model.cost(base + step) - cost_model.cost(base)  # bilinear: a unit step is exact up to w^2
    assert float(widths.grad[0]) == pytest.approx(finite, rel=0.05)


def test_a_hard_mask_runs_the_sub_network_that_keeps_the_first_channels():
    space = channel_space(SPEC)
    model = materialize(SPEC, seed=0).eval()
    widths = Widths(space, tuple(max(1, g.base // 2 + 1) for g in space))
    kept = {g.name: list(range(widths[g.name])) for g in space}
    small = materialize(SPEC, widths)
    small.load_state_dict(inherit_weights(model, space, kept))
    small.eval()
    scaler = ChannelScaler(model, space)
    scaler.scales = {g.name: prefix_mask(widths[g.name], g.base) for g in space}
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), small(x), atol=1e-5)
        scaler.remove()
        assert not torch.allclose(model(x), small(x), atol=1e-3)


@pytest.fixture(scope="module")
def task(tiny_task):
    return replace(tiny_task, train=replace(tiny_task.train, device="cpu"))


def test_exported_widths_meet_the_target(task, one_thread):
    sampled = find_widths(replace(task, params={"export": "sample", "arch_lr": 0.1, "samples": 4000}), "dmcp")
    cost = task.cost_model.cost(sampled.widths)
    assert sampled.info["samples_within_tolerance"] > 0
    assert abs(cost - task.cost_target) <= 0.01 * task.cost_target and sampled.multiplier == 1.0
    expected = find_widths(replace(task, params={"arch_lr": 0.1}), "dmcp")
    assert abs(task.cost_model.cost(expected.widths) - task.cost_target) <= 0.005 * task.cost_target
    assert expected.info["arch_steps"] > 0 and expected.search_flops > 0
    widest = Widths.base(task.space).scale(1.5)
    assert all(w <= widest[name] for name, w in sampled.widths.items())


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"widen": 0.5}, "method.widen: 0.5 is not allowed"),
        ({"band": 1.0}, r"method.band: 1.0 is not allowed; choose a number in \(0, 1\)"),
        ({"subgroups": 0}, "method.subgroups: 0 is not allowed"),
        ({"arch_start": 1.5}, "method.arch_start: 1.5 is not allowed"),
        ({"export": "best"}, "method.export: 'best' is not allowed; choose one of: expected, sample"),
        ({"arch_lr": -1}, "method.arch_lr: -1 is not allowed"),
        ({"epochs": 0}, "method.epochs: 0 is not allowed"),
    ],
)
def test_bad_hyperparameters_are_named(setting, message, tmp_path):
    raw = {"name": "d", "model": SPEC, "method": {"name": "dmcp", **setting}, "storage": str(tmp_path)}
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_the_expected_network_scales_each_sub_group_by_its_marginal_keep_probability():
    chain = dmcp.Chain(minimum=2, size=3, count=2)
    alphas = torch.tensor([0.0, 1.0])
    first, second = 0.5, 0.5 * float(torch.sigmoid(torch.tensor(1.0)))
    mask = dmcp.soft_mask(chain, alphas)
    assert mask.tolist() == pytest.approx([1, 1, first, first, first, second, second, second])
    assert float(mask.sum()) == pytest.approx(float(dmcp.expected_width(chain, alphas)))


SPEC_A = "resnet_cifar:depth=8,resolution=8,shortcut=A"


def prefix_state(model, space, widths):
    """The base model's weights cut to the first `widths` channels of every group (no routing check)."""
    cuts = channel_cuts(model, space, {name: range(w) for name, w in widths.items()})
    state = {}
    for key, tensor in model.state_dict().items():
        for dim, index in cuts.get(key, {}).items():
            tensor = tensor.index_select(dim, index)
        state[key] = tensor
    return state


def counted_macs(model, resolution):
    """Multiply-accumulates of one image, counted by hooks on every conv and linear (independent of CostModel)."""
    total = []

    def count(module, inputs, output):
        per_output = module.weight[0].numel()  # in/groups x kernel area, or in_features
        total.append(output[0].numel() * per_output)

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for hook in hooks:
        hook.remove()
    return sum(total)


@pytest.mark.parametrize(
    "streams",
    [
        (12, 10, 40),  # stage 2's stream narrower than stage 1's: the pad shortcut cuts
        (8, 20, 30),  # widening by other amounts than the base's 16 -> 32 -> 64: re-centred padding
        (16, 32, 64),  # the streams whole, only the mids masked
    ],
)
def test_a_hard_mask_on_zero_pad_shortcuts_runs_the_narrower_networks_own_routing(streams):
    space = channel_space(SPEC_A)
    assert pad_shortcuts(materialize(SPEC_A), space), "the option-A model has zero-pad shortcuts"
    torch.manual_seed(0)
    model = materialize(SPEC_A, seed=0)
    for module in model.modules():  # non-trivial BN statistics, so every channel's scale matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    mids = (5, 7, 9)
    values = {f"stage{s + 1}.stream": w for s, w in enumerate(streams)}
    values |= {f"stage{s + 1}.block1.mid": w for s, w in enumerate(mids)}
    widths = Widths(space, tuple(values[name] for name in space.names))
    small = materialize(SPEC_A, widths)
    small.load_state_dict(prefix_state(model, space, widths))
    small.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        whole = model(x)
        scaler = ChannelScaler(model, space)
        scaler.scales = {g.name: prefix_mask(widths[g.name], g.base) for g in space}
        assert torch.allclose(model(x), small(x), atol=1e-5)
        scaler.scales = {}  # unscaled: the base model's own routing again
        assert torch.equal(model(x), whole)
        scaler.remove()
        assert not torch.allclose(whole, small(x), atol=1e-3)


def test_expected_cost_on_zero_pad_shortcuts_is_the_chains_expectation_of_the_cost_model():
    cost_model = CostModel.from_spec(SPEC_A)
    space = cost_model.space
    widest = Widths.base(space).scale(1.5)
    group_chains = dmcp.chains(space, widest, 0.1, 2)  # 3 states per group: 3^6 joint states, enumerable
    assert all(c.count == 2 for c in group_chains)
    generator = torch.Generator().manual_seed(3)
    alphas = [torch.randn(c.count, generator=generator, dtype=torch.float64) for c in group_chains]
    keep = [torch.sigmoid(a).numpy() for a in alphas]
    states = [(1 - k[0], k[0] * (1 - k[1]), k[0] * k[1]) for k in keep]  # P(0), P(1), P(2) sub-groups kept
    counts = np.asarray(list(itertools.product(range(3), repeat=len(space))))
    probability = np.prod([[states[g][k] for g, k in enumerate(row)] for row in counts], axis=1)
    assert probability.sum() == pytest.approx(1.0)
    costs = cost_model.cost(dmcp.widths_of(group_chains, counts).astype(np.float64))
    expected = cost_model.cost_tensor(dmcp.expected_widths(group_chains, alphas))
    assert float(expected) == pytest.approx(float(np.dot(probability, costs)), rel=1e-9)
    # and the cost model prices each of those sub-networks as the built model counts it
    for row in counts[:: len(counts) // 7]:
        widths = Widths(space, tuple(int(w) for w in dmcp.widths_of(group_chains, row)))
        assert cost_model.cost(widths) == counted_macs(materialize(SPEC_A, widths), 8)


def test_dmcp_searches_an_option_a_resnet_end_to_end_at_the_target(task, one_thread):
    spec = canonical_spec("resnet_cifar:depth=8,shortcut=A")
    cost_model = CostModel.from_spec(spec)
    option_a = replace(task, model=spec, cost_model=cost_model, cost_target=0.5 * cost_model.base().macs)
    found = find_widths(replace(option_a, params={"arch_lr": 0.1, "arch_start": 0.0}), "dmcp")
    assert found.info["arch_steps"] > 0 and np.isfinite(found.info["task_loss"])
    assert abs(cost_model.cost(found.widths) - option_a.cost_target) <= 0.005 * option_a.cost_target
    moved = [k for keep in found.info["keep_probabilities"].values() for k in keep]
    assert any(abs(k - float(torch.sigmoid(torch.tensor(2.0)))) > 1e-3 for k in moved)
