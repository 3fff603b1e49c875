"""Model families by name, and the three things every consumer asks of a spec: space, model, input shape."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from widthtune.models import (
    densenet_cifar,
    mobilenet_v2,
    preresnet_cifar,
    repvgg,
    resnet,
    resnet_cifar,
    vgg_cifar,
)
from widthtune.models.catalog import (
    DENSENET_CIFAR,
    INPUT_OPTIONS,
    MOBILENET_V2,
    PRERESNET_CIFAR,
    PYTHON,
    REPVGG,
    RESNET,
    RESNET_CIFAR,
    TORCHVISION,
    VGG_CIFAR,
    FamilyEntry,
)
from widthtune.models.dependency import UnsupportedModelError, dependency_space
from widthtune.models.space import ChannelSpace
from widthtune.models.spec import ModelSpec, SpecError, parse_spec
from widthtune.models.surgery import resize
from widthtune.models.widths import MAX_WIDTH_RATIO, Widths

# the largest input side a spec may declare (a traced pass at it must fit in memory)
MAX_RESOLUTION = 4096


@dataclass(frozen=True)
class Family:
    """How to make one kind of model: its catalogue entry (options with defaults), its channel space, a builder."""

    entry: FamilyEntry
    space: Callable[[Mapping[str, Any]], ChannelSpace]
    build: Callable[[Mapping[str, Any], Mapping[str, int]], nn.Module]
    deploy: Callable[[nn.Module], nn.Module] | None = None  # trained form -> what ships (None: the same)

    @property
    def name(self) -> str:
        """The family's name, the part of a spec before the first ':'."""
        return self.entry.name

    @property
    def defaults(self) -> Mapping[str, Any]:
        """The options the family takes, with their defaults."""
        return self.entry.defaults

    @property
    def summary(self) -> str:
        """One line for `widthtune models`."""
        return self.entry.summary

    @property
    def open_options(self) -> bool:
        """Whether options beyond the defaults go on to the model's factory."""
        return self.entry.open_options


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
    if "width" in defaults and options["width"] is not None and not 0 < options["width"] <= MAX_WIDTH_RATIO:
        raise SpecError(f"{family}: width={options['width']!r} must be in (0, {MAX_WIDTH_RATIO}]")
    if "resolution" in options and options["resolution"] > MAX_RESOLUTION:
        raise SpecError(f"{family}: resolution={options['resolution']!r} must be at most {MAX_RESOLUTION}")


def _generic_family(entry: FamilyEntry, factory: Callable[[ModelSpec], Callable[..., nn.Module]]) -> Family:
    """A family whose models come from a factory; groups come from the dependency graph of the base model."""
    name = entry.name

    def base_model(options: Mapping[str, Any]) -> nn.Module:
        kwargs = {k: v for k, v in options.items() if k not in INPUT_OPTIONS and k != "__target__"}
        where = f"{name}:{options['__target__']}"
        make = factory(ModelSpec(name, options["__target__"]))
        try:
            inspect.signature(make).bind(**kwargs)
        except TypeError as error:
            raise SpecError(f"{where} does not take the options {sorted(kwargs)}: {error}") from None
        except ValueError:  # no signature to check (some C callables): the call below says what is wrong
            pass
        try:
            model = make(**kwargs)
        except TypeError as error:
            raise SpecError(f"{where}: {error}") from None
        if not isinstance(model, nn.Module):
            raise SpecError(f"{where} returned {type(model).__name__!r}, not a torch.nn.Module")
        return model

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

    return Family(entry, space, build)


def _torchvision_factory(spec: ModelSpec) -> Callable[..., nn.Module]:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if spec.target not in available:
        raise SpecError(
            f"torchvision:{spec.target} is not a torchvision classification model; e.g. resnet18, mobilenet_v2, "
            "regnet_x_400mf, efficientnet_b0, convnext_tiny (see torchvision.models.list_models())"
        )
    return functools.partial(torchvision.models.get_model, spec.target, weights=None)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


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
            try:
                loader_spec.loader.exec_module(module)
            except Exception as error:  # the user's file failed as it ran: say so in one line
                raise SpecError(f"python:{spec.target}: running {path} raised {_one_line(error)}") from None
            sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:  # not found, or the module failed as it ran
            raise SpecError(
                f"python:{spec.target}: cannot import {location!r} ({_one_line(error)})"
            ) from None
    if not hasattr(module, attribute):
        raise SpecError(f"python:{spec.target}: {location} has no attribute {attribute!r}")
    return _model_maker(spec, getattr(module, attribute))


def _model_maker(spec: ModelSpec, candidate: object) -> Callable[..., nn.Module]:
    """Only an nn.Module subclass or a Python function is called; anything else is refused before it runs.

    A class is checked before it is instantiated; a function can only be checked after it returns, so what it
    returns must be an nn.Module (see `_generic_family`). Builtins such as `os.system`, other classes and
    other objects never run.
    """
    if isinstance(candidate, type):
        if issubclass(candidate, nn.Module):
            return candidate
        raise SpecError(
            f"python:{spec.target}: class {candidate.__qualname__} is not a torch.nn.Module subclass; "
            "name an nn.Module class or a function that returns one"
        )
    if inspect.isfunction(candidate):
        return candidate
    raise SpecError(
        f"python:{spec.target} is a {type(candidate).__name__!r} object, not an nn.Module class or a Python function "
        "that returns an nn.Module"
    )


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(RESNET_CIFAR, resnet_cifar.channel_space, resnet_cifar.build),
        Family(VGG_CIFAR, vgg_cifar.channel_space, vgg_cifar.build),
        Family(DENSENET_CIFAR, densenet_cifar.channel_space, densenet_cifar.build),
        Family(PRERESNET_CIFAR, preresnet_cifar.channel_space, preresnet_cifar.build),
        Family(MOBILENET_V2, mobilenet_v2.channel_space, mobilenet_v2.build),
        Family(RESNET, resnet.channel_space, resnet.build),
        Family(REPVGG, repvgg.channel_space, repvgg.build, deploy=repvgg.reparameterize),
        _generic_family(TORCHVISION, _torchvision_factory),
        _generic_family(PYTHON, _python_factory),
    )
}


def deploy(spec: ModelSpec | str, model: nn.Module) -> nn.Module:
    """The form of a trained model that ships and is priced: the family's merge (RepVGG), else the model itself."""
    convert = family_of(parse_spec(spec)).deploy
    return model if convert is None else convert(model)


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
        # the model's maker is found and checked now (a python: spec imports its module), called later
        (_torchvision_factory if family.name == "torchvision" else _python_factory)(spec)
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
