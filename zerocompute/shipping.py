"""Python functions as guests: their source and the values they use, with no I/O.

A function defined in a notebook cell or a script travels to the object servers as
Python source, never bytecode (the servers' CPython, 3.12 for WASI, need not be the
user's): its own source, then, for every global name it uses, what that name is in
the user's interpreter, written as source too:

- a module of the standard library: ``import json`` (``import numpy`` is refused:
  the guest has only the standard library);
- a function: its source, and what *it* uses, the same way (a function of a
  standard-library module: ``from math import sqrt``);
- a compiled regular expression: ``re.compile(pattern, flags)``;
- a value Python can write as a literal and read back equal (numbers, strings,
  bytes, ``None``, booleans, and tuples, lists, dicts, sets of them): its ``repr``;
- the guest SDK or one of its functions (``zerocompute.increment_counter``): its
  import from the guest's ``zerocompute_guest``.

Anything else (an open file, a socket, a class instance, a lambda whose source
cannot be recovered) raises :class:`CannotShip` naming it, before anything is
uploaded.  The result is one script (:func:`guest_script`), named by its digest
so that the same functions are uploaded once.
"""

from __future__ import annotations

import ast
import builtins
import dis
import hashlib
import inspect
import re
import sys
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A value bigger than this, written out, is data: keep it in Swift and read it there.
MAX_VALUE_SOURCE = 1 << 20
_LITERALS = (type(None), bool, int, float, complex, str, bytes)
GUEST_SDK = "zerocompute_guest"
SDK_MODULES = (GUEST_SDK, "zerocompute.sandbox.zerocompute_guest")


class CannotShip(ValueError):
    """A function refers to something that cannot travel to the object servers."""


@dataclass
class Shipment:
    """Source lines for the names a set of functions needs, in dependency order."""

    imports: dict[str, str] = field(default_factory=dict)  # name -> its import line
    values: dict[str, str] = field(default_factory=dict)  # name -> its assignment
    functions: dict[str, str] = field(default_factory=dict)  # name -> its source
    seen: set[int] = field(default_factory=set)  # ids of the functions already added

    def source(self) -> str:
        parts = [*sorted(set(self.imports.values())), "", *self.values.values(), "",
                 *self.functions.values()]
        return "\n".join(parts).strip() + "\n"


def ship(*functions: Callable[..., Any]) -> Shipment:
    """What ``functions`` need, as source (:class:`CannotShip` if something cannot
    travel)."""
    shipment = Shipment()
    for function in functions:
        _add_function(shipment, function.__name__, function, function.__name__)
    return shipment


def _add_function(shipment: Shipment, name: str, function: Any, path: str) -> None:
    if id(function) in shipment.seen:
        return
    if not isinstance(function, types.FunctionType):
        raise CannotShip(f"{path} is {type(function).__name__}, not a function defined "
                         "with def")
    shipment.seen.add(id(function))
    if function.__name__ == "<lambda>":
        raise CannotShip(f"{path} is a lambda: its source cannot be recovered exactly; "
                         "define it with def")
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        raise CannotShip(f"{path}: its source cannot be found (defined in an interactive "
                         "shell without history?)") from None
    tree = ast.parse(source)
    definition = tree.body[0]
    if not isinstance(definition, ast.FunctionDef) or definition.decorator_list:
        raise CannotShip(f"{path}: only plain functions (def, no decorators) travel")
    # A closure's free variables travel as module-level names of the script.
    free = dict(zip(function.__code__.co_freevars, function.__closure__ or (), strict=True))
    for used in sorted(_globals_used(function.__code__) | set(free)):
        if used in shipment.imports or used in shipment.values or used in shipment.functions:
            continue
        if used in free:
            try:
                value = free[used].cell_contents
            except ValueError:
                raise CannotShip(f"{path} uses {used!r} before it is assigned") from None
            _add_name(shipment, used, value, f"{path} -> {used}")
        elif used in function.__globals__:
            _add_name(shipment, used, function.__globals__[used], f"{path} -> {used}")
        elif not hasattr(builtins, used):
            raise CannotShip(f"{path} uses {used!r}, which is not defined")
    if definition.name != name:
        source += f"\n{name} = {definition.name}\n"
    shipment.functions[name] = source


def _globals_used(code: types.CodeType) -> set[str]:
    """Every global name ``code``, and the code nested in it, reads (not attributes:
    ``co_names`` holds both)."""
    names = {i.argval for i in dis.get_instructions(code)
             if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _globals_used(const)
    return names


def _add_name(shipment: Shipment, name: str, value: Any, path: str) -> None:
    if _of_the_sdk(value):
        # The guest SDK is in every guest as "zerocompute_guest" (increment_counter).
        if isinstance(value, types.ModuleType):
            shipment.imports[name] = f"import {GUEST_SDK} as {name}"
        else:
            shipment.imports[name] = f"from {GUEST_SDK} import {value.__name__}" + (
                f" as {name}" if name != value.__name__ else "")
    elif isinstance(value, types.ModuleType):
        shipment.imports[name] = _import_line(value.__name__, name, path)
    elif isinstance(value, types.FunctionType) and _is_users(value):
        _add_function(shipment, name, value, path)
    elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)) \
            and _stdlib(getattr(value, "__module__", None) or ""):
        module, qualname = value.__module__, value.__qualname__
        if "." in qualname or getattr(sys.modules.get(module), qualname, None) is not value:
            raise CannotShip(f"{path} is {module}.{qualname}, which cannot be imported "
                             "by its name")
        line = f"from {module} import {qualname}"
        shipment.imports[name] = line + (f" as {name}" if name != qualname else "")
    elif isinstance(value, re.Pattern):
        shipment.imports.setdefault("re", "import re")
        shipment.values[name] = f"{name} = re.compile({value.pattern!r}, {int(value.flags)})"
    elif _is_literal(value):
        text = literal_source(value)
        if len(text) > MAX_VALUE_SOURCE:
            raise CannotShip(f"{path} is {len(text):,} bytes written out: data that large "
                             "belongs in Swift, read by the job")
        shipment.values[name] = f"{name} = {text}"
    else:
        raise CannotShip(f"{path} is {_describe(value)}: it cannot travel to the object "
                         "servers (only functions, standard modules, compiled regexes and "
                         "literal values do)")


def _of_the_sdk(value: Any) -> bool:
    module = value.__name__ if isinstance(value, types.ModuleType) else \
        getattr(value, "__module__", None)
    return module in SDK_MODULES


def _import_line(module: str, name: str, path: str) -> str:
    if not _stdlib(module):
        raise CannotShip(f"{path} is the module {module!r}, which is not in the guests' "
                         "standard library")
    top = module.split(".", 1)[0]
    if name == top and module == top:
        return f"import {module}"
    return f"import {module} as {name}"


def _stdlib(module: str) -> bool:
    return module.split(".", 1)[0] in sys.stdlib_module_names and module != "__main__"


def _is_users(function: types.FunctionType) -> bool:
    """A function of the user's own (a notebook's, a script's), not of an installed
    module: it travels as source."""
    return not _stdlib(function.__module__ or "")


def _is_literal(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if isinstance(value, _LITERALS):
        return type(value) in _LITERALS and not (isinstance(value, float)
                                                 and value != value)  # NaN is no literal
    if type(value) in (tuple, list, set, frozenset):
        return all(_is_literal(v, depth + 1) for v in value) and (
            type(value) is not frozenset)  # frozenset({...}) is a call, not a literal
    if type(value) is dict:
        return all(_is_literal(k, depth + 1) and _is_literal(v, depth + 1)
                   for k, v in value.items())
    return False


def literal_source(value: Any) -> str:
    """``repr``, but a set's elements in a fixed order: the same value, the same source
    (and script digest) in every interpreter, whatever its string hashing."""
    if type(value) is set:
        return "{" + ", ".join(sorted(literal_source(v) for v in value)) + "}" if value \
            else "set()"
    if type(value) in (list, tuple):
        inner = ", ".join(literal_source(v) for v in value)
        if type(value) is list:
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if type(value) is dict:
        return "{" + ", ".join(f"{literal_source(k)}: {literal_source(v)}"
                               for k, v in value.items()) + "}"
    return repr(value)


def _describe(value: Any) -> str:
    kind = type(value)
    text = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" \
        else kind.__qualname__
    return f"a {text}" + (f" ({value.name!r})" if isinstance(getattr(value, "name", None),
                                                            str) else "")


def digest(source: str) -> str:
    """The name the script is kept under: the same source, the same object."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:32]


# The glue between the user's functions and the guest SDK (sandbox/zerocompute_guest.py):
# keys travel as JSON text, so that they come back with their Python types.
_MAP_REDUCE_GLUE = '''
import json as _zc_json
_zc_mapper, _zc_reducer, _zc_combiner = {mapper}, {reducer}, {combiner}


def map(record):
    for key, value in _zc_mapper(record):
        yield _zc_json.dumps(key, separators=(",", ":"), sort_keys=True), value


def reduce(key, values):
    return _zc_reducer(_zc_json.loads(key), values)


def combine(key, values):
    return _zc_combiner(_zc_json.loads(key), values)
'''

_MAP_GLUE = '''
import json as _zc_json
import sys as _zc_sys
_zc_function = {function}
for _zc_name in ("map", "reduce", "combine"):  # this is a program, not an SDK script
    globals().pop(_zc_name, None)
_zc_data = _zc_sys.stdin.buffer.read()
try:
    _zc_data = _zc_data.decode("utf-8")
except UnicodeDecodeError:
    pass
_zc_sys.stdout.write(_zc_json.dumps(_zc_function(_zc_data)))
'''


def map_reduce_script(mapper: Callable[..., Any], reducer: Callable[..., Any],
                      combiner: Callable[..., Any] | None = None) -> str:
    """One guest script for a MapReduce job of Python functions: ``map``, ``reduce``
    and ``combine`` for the SDK, around the user's functions."""
    shipment = ship(*[f for f in (mapper, reducer, combiner) if f is not None])
    return shipment.source() + _MAP_REDUCE_GLUE.format(
        mapper=mapper.__name__, reducer=reducer.__name__,
        combiner=(combiner or reducer).__name__)


def map_script(function: Callable[..., Any]) -> str:
    """One guest script for a map-only job: ``function`` of each input's content (text,
    or bytes if it is not UTF-8), its result written as JSON."""
    return ship(function).source() + _MAP_GLUE.format(function=function.__name__)
