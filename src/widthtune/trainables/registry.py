"""The method registry: methods register themselves here; this module imports none of them.

Built-in methods are the modules `widthtune.trainables` imports; a user's own method is a Python file named
`python:path/to/my_method.py` (it calls `register(Method(...))` once), or an installed package's entry point
in the `widthtune.methods` group (the entry point's object is a `Method`, or a module that registers one).
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from widthtune.trainables.method import Method

USER_PREFIX = "python:"
ENTRY_POINT_GROUP = "widthtune.methods"

_METHODS: dict[str, Method] = {}


class MethodNotFoundError(ValueError):
    """A method name that is neither registered, nor a method file, nor an installed plugin."""


def register(method: Method) -> Method:
    """Make `method` available by its name (a second method of the same name is refused)."""
    existing = _METHODS.get(method.name)
    if existing is not None and existing is not method:
        raise ValueError(f"method {method.name!r} is registered already; give yours another name")
    _METHODS[method.name] = method
    return method


def _load_file(name: str) -> Method:
    path = Path(name[len(USER_PREFIX) :]).expanduser().resolve()
    if path.suffix != ".py" or not path.is_file():
        raise MethodNotFoundError(f"method.name: {name!r}: no Python file {str(path)!r}")
    module_name = f"widthtune_method_{abs(hash(str(path)))}"
    before = dict(_METHODS)
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise MethodNotFoundError(
                f"method.name: {name!r} failed to load: {type(error).__name__}: {error}"
            ) from None
    new = [m for key, m in _METHODS.items() if before.get(key) is not m]
    found = new or [getattr(sys.modules[module_name], "METHOD", None)]
    if len(found) != 1 or not isinstance(found[0], Method):
        raise MethodNotFoundError(
            f"method.name: {name!r} must register exactly one method (register(Method(...))), "
            f"it registered {len(new)}"
        )
    _METHODS[name] = found[0]
    return found[0]


def _load_plugins() -> None:
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in _METHODS:
            continue
        loaded = point.load()
        if isinstance(loaded, Method):
            register(loaded)


def registered() -> dict[str, Method]:
    """Every method by name: the built-ins, then installed plugins (method files appear once loaded)."""
    _load_plugins()
    return {k: m for k, m in _METHODS.items() if not k.startswith(USER_PREFIX)}


def get_method(name: str) -> Method:
    """The method `name` names, loading a method file or plugin when needed; else an error listing the methods."""
    if name in _METHODS:
        return _METHODS[name]
    if name.startswith(USER_PREFIX):
        return _load_file(name)
    methods = registered()
    if name in methods:
        return methods[name]
    raise MethodNotFoundError(
        f"method.name: {name!r} is not a method; choose one of: {', '.join(methods)}, "
        "or python:path/to/my_method.py"
    )
