"""Model families by name, and the three things every consumer asks of a spec: space, model, input shape."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from widthtune.models import densenet_cifar, mobilenet_v2, resnet, resnet_cifar, vgg_cifar
from widthtune.models.dependency import UnsupportedModelError, dependency_space
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec, SpecError, parse_spec
from widthtune.models.surgery import resize
from widthtune.models.widths import Widths

# Options that describe the input or the space, never passed to a generic model's factory.
INPUT_OPTIONS: dict[str, Any] = {"resolution": 224, "in_channels": 3, "divisor": 1, "min_width": 1}


@dataclass(frozen=True)
class Family:
    """How to make one kind of model: its options with defaults, its channel space, and a builder."""

    name: str
    defaults: Mapping[str, Any]
    space: Callable[[Mapping[str, Any]], ChannelSpace]
    build: Callable[[Mapping[str, Any], Mapping[str, int]], nn.Module]
    summary: str
    open_options: bool = False


def _check_types(family: str, options: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    for key, value in options.items():
        default = defaults.get(key)
        if default is None or value is None:
            continue
        if isinstance(default, bool) and not isinstance(value, bool):
            raise SpecError(f"{family}: {key}={value!r} must be true or false")
        if (
            isinstance(default, int)
            and not isinstance(default, bool)
            and (isinstance(value, bool) or not isinstance(value, int))
        ):
            raise SpecError(f"{family}: {key}={value!r} must be an integer")
        if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise SpecError(f"{family}: {key}={value!r} must be a number")
    for key in ("num_classes", "resolution", "in_channels", "divisor", "min_width"):
        if key in options and (not isinstance(options[key], int) or options[key] < 1):
            raise SpecError(f"{family}: {key}={options[key]!r} must be a positive integer")
    if "width" in options and not options["width"] > 0:
        raise SpecError(f"{family}: width={options['width']!r} must be positive")


def _generic_family(
    name: str, factory: Callable[[ModelSpec], Callable[..., nn.Module]], summary: str
) -> Family:
    """A family whose models come from a factory; groups come from the dependency graph of the base model."""

    def base_model(options: Mapping[str, Any]) -> nn.Module:
        kwargs = {k: v for k, v in options.items() if k not in INPUT_OPTIONS and k != "__target__"}
        target = ModelSpec(name, options["__target__"])
        try:
            return factory(target)(**kwargs)
        except TypeError as error:
            raise SpecError(f"{name}:{options['__target__']}: {error}") from None

    @functools.lru_cache(maxsize=32)
    def space_of(frozen: tuple[tuple[str, Any], ...]) -> ChannelSpace:
        """Traced once per distinct options: a DependencyGraph pass is the expensive part."""
        options = dict(frozen)
        example = torch.zeros(1, options["in_channels"], options["resolution"], options["resolution"])
        try:
            return dependency_space(
                base_model(options), example, min_width=options["min_width"], divisor=options["divisor"]
            )
        except UnsupportedModelError as error:
            raise SpecError(f"{name}:{options['__target__']}: {error}") from None
        except RuntimeError as error:  # the model cannot run on the declared input
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SpecError(
                f"{name}:{options['__target__']} does not run on input {tuple(example.shape)} "
                f"(set resolution / in_channels to what it takes): {first}"
            ) from None

    def space(options: Mapping[str, Any]) -> ChannelSpace:
        return space_of(tuple(sorted(options.items())))

    def build(options: Mapping[str, Any], widths: Mapping[str, int]) -> nn.Module:
        return resize(base_model(options), space(options), widths)

    return Family(name, dict(INPUT_OPTIONS), space, build, summary, open_options=True)


def _torchvision_factory(spec: ModelSpec) -> Callable[..., nn.Module]:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if spec.target not in available:
        raise SpecError(
            f"torchvision:{spec.target} is not a torchvision classification model; e.g. resnet18, mobilenet_v2, "
            "regnet_x_400mf, efficientnet_b0, convnext_tiny (see torchvision.models.list_models())"
        )
    return functools.partial(torchvision.models.get_model, spec.target, weights=None)


def _python_factory(spec: ModelSpec) -> Callable[..., nn.Module]:
    location, _, attribute = str(spec.target).rpartition(":")
    if location.endswith(".py") or "/" in location:
        path = Path(location).expanduser().resolve()
        if not path.is_file():
            raise SpecError(f"python:{spec.target}: no file {path}")
        module_name = f"widthtune_user_{abs(hash(str(path)))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
            sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise SpecError(f"python:{spec.target}: cannot import {location!r} ({error})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise SpecError(f"python:{spec.target}: {location} has no callable {attribute!r}")
    return factory


FAMILIES: dict[str, Family] = {
    "resnet_cifar": Family(
        "resnet_cifar",
        resnet_cifar.DEFAULTS,
        resnet_cifar.channel_space,
        resnet_cifar.build,
        "CIFAR ResNet, depth 6n+2, shortcut A (zero-pad) or C (1x1 conv + BN)",
    ),
    "vgg_cifar": Family(
        "vgg_cifar",
        vgg_cifar.DEFAULTS,
        vgg_cifar.channel_space,
        vgg_cifar.build,
        "CIFAR VGG-11/13/16/19 (Network Slimming configs)",
    ),
    "densenet_cifar": Family(
        "densenet_cifar",
        densenet_cifar.DEFAULTS,
        densenet_cifar.channel_space,
        densenet_cifar.build,
        "CIFAR DenseNet (Network Slimming's DenseNet-40, DenseNet-BC-100): depth, growth, bottleneck, compression",
    ),
    "mobilenet_v2": Family(
        "mobilenet_v2",
        mobilenet_v2.DEFAULTS,
        mobilenet_v2.channel_space,
        mobilenet_v2.build,
        "MobileNetV2 with stem=cifar (stride 1) or stem=imagenet",
    ),
    "resnet": Family(
        "resnet",
        resnet.DEFAULTS,
        resnet.channel_space,
        resnet.build,
        "ImageNet ResNet-18/34/50/101/152 or any layers=a-b-c-d (torchvision classes)",
    ),
    "torchvision": _generic_family(
        "torchvision", _torchvision_factory, "any torchvision classifier: torchvision:NAME"
    ),
    "python": _generic_family(
        "python", _python_factory, "your own nn.Module factory: python:FILE.py:CALLABLE"
    ),
}


def family_of(spec: ModelSpec) -> Family:
    """The family a spec names, with an error that lists the families."""
    try:
        return FAMILIES[spec.family]
    except KeyError:
        raise SpecError(
            f"unknown model family {spec.family!r}; choose one of: {', '.join(FAMILIES)}"
        ) from None


def resolve_options(spec: ModelSpec | str) -> dict[str, Any]:
    """The spec's options with the family's defaults filled in; unknown keys and bad values are errors."""
    spec = parse_spec(spec)
    family = family_of(spec)
    unknown = [key for key in spec.kwargs if key not in family.defaults]
    if unknown and not family.open_options:
        raise SpecError(
            f"{family.name}: unknown option {unknown[0]!r}; options are: {', '.join(family.defaults)}"
        )
    options = {**family.defaults, **spec.kwargs}
    _check_types(family.name, options, family.defaults)
    if family.open_options:
        if not spec.target:
            raise SpecError(f"{family.name}: name the model, e.g. {family.summary.split(': ')[-1]}")
        options["__target__"] = spec.target
        if family.name == "torchvision":
            _torchvision_factory(spec)
    return options


def canonical_spec(spec: ModelSpec | str) -> ModelSpec:
    """The spec with every default written out, so artifacts and result rows name the model exactly."""
    spec = parse_spec(spec)
    options = {k: v for k, v in resolve_options(spec).items() if k != "__target__"}
    return ModelSpec(spec.family, spec.target, tuple(sorted(options.items())))


def channel_space(spec: ModelSpec | str) -> ChannelSpace:
    """The ordered channel groups of the model a spec names."""
    spec = parse_spec(spec)
    options = resolve_options(spec)
    try:
        return family_of(spec).space(options)
    except ValueError as error:
        if isinstance(error, SpecError):
            raise
        raise SpecError(str(error)) from None


def input_shape(spec: ModelSpec | str, batch: int = 1) -> tuple[int, int, int, int]:
    """The NCHW input the model expects."""
    options = resolve_options(spec)
    return (batch, options["in_channels"], options["resolution"], options["resolution"])


def materialize(
    spec: ModelSpec | str, widths: Widths | Mapping[str, int] | None = None, *, seed: int | None = None
) -> nn.Module:
    """A fresh, randomly initialised model at `widths` (the base when None) -- smaller or larger than the base."""
    spec = parse_spec(spec)
    widths = Widths.coerce(channel_space(spec), widths)
    options = resolve_options(spec)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return family_of(spec).build(options, widths)


def create_model(
    spec: ModelSpec | str, widths: Widths | Mapping[str, int] | None = None, *, seed: int | None = None
) -> nn.Module:
    """timm-style entry point: the model a spec names, at its base widths unless widths are given."""
    return materialize(spec, widths, seed=seed)
