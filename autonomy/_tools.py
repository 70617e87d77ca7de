"""Tools: a Python function described to a model (a JSON schema built from its type hints and
its Google-style docstring) and called with the arguments the model wrote.

It knows nothing of models, agents or nodes: an agent turns a `Tool`'s failure into text for
the model; here a bad argument simply raises.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, final

__all__ = ["Tool", "schema_of"]

_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What OpenAI-compatible endpoints accept as a function name."""
_SECTION: Final = re.compile(
    r"^(Args|Arguments|Parameters|Returns|Yields|Raises|Examples?|Notes?):\s*$"
)
_ARGUMENT: Final = re.compile(r"^\s*\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SCALARS: Final[dict[Any, dict[str, Any]]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


def schema_of(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint: scalars, ``list[X]``, ``tuple[X, ...]``,
    ``dict[str, X]``, ``Literal[...]``, enums, unions and ``Optional``, ``Annotated[X, "text"]``.

    Raises:
        TypeError: a type JSON cannot carry (a class, a callable...).
    """
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = schema_of(args[0])
        text = next((meta for meta in args[1:] if isinstance(meta, str)), None)
        return {**schema, "description": text} if text else schema
    if origin is typing.Literal:
        return {"enum": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if origin in (typing.Union, types.UnionType):
        options = [schema_of(arg) for arg in args if arg is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return {"anyOf": [schema, {"type": "null"}]} if type(None) in args else schema
    if hint in (list, tuple, set, frozenset) or origin in (list, set, frozenset, Sequence):
        return {"type": "array", "items": schema_of(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_of(args[0])}
        return {"type": "array", "prefixItems": [schema_of(arg) for arg in args]}
    if hint is dict or origin in (dict, Mapping):
        if len(args) == 2:
            return {"type": "object", "additionalProperties": schema_of(args[1])}
        return {"type": "object"}
    raise TypeError(f"{hint!r} cannot be described to a model as JSON")


def _docstring(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The description (the text before the first section) and each argument's text."""
    lines = inspect.cleandoc(function.__doc__ or "").splitlines()
    description: list[str] = []
    arguments: dict[str, str] = {}
    section = None
    current = None
    for line in lines:
        heading = _SECTION.match(line.strip()) if not line.startswith(" ") else None
        if heading:
            section = heading.group(1)
            current = None
        elif section is None:
            description.append(line)
        elif section in ("Args", "Arguments", "Parameters") and line.strip():
            match = _ARGUMENT.match(line)
            if match and len(line) - len(line.lstrip()) <= 4:
                current = match.group(1)
                arguments[current] = match.group(2).strip()
            elif current is not None:  # a continuation line
                arguments[current] = f"{arguments[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), arguments


@final
class Tool:
    """A function an agent's model may call, with its name, description and JSON schema."""

    __slots__ = ("description", "function", "name", "parameters")

    def __init__(self, function: Callable[..., Any]) -> None:
        """Describe ``function`` (sync or async) from its signature, hints and docstring.

        Raises:
            TypeError: it is not a function a model can call: no usable name, ``*args`` or
                ``**kwargs``, or a parameter of a type JSON cannot carry.
        """
        if not callable(function):
            raise TypeError(f"a tool must be a function, got {type(function).__name__}")
        name = getattr(function, "__name__", "")
        if not _NAME.match(name):
            raise TypeError(f"a tool needs a name of letters, digits, _ and -; got {name!r}")
        try:
            hints = typing.get_type_hints(function, include_extras=True)
        except Exception as exc:
            raise TypeError(f"tool {name!r}: its type hints do not resolve ({exc})") from exc
        description, texts = _docstring(function)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"tool {name!r}: *args and **kwargs cannot be described")
            try:
                schema = schema_of(hints.get(parameter.name, Any))
            except TypeError as exc:
                raise TypeError(f"tool {name!r}, parameter {parameter.name!r}: {exc}") from None
            if parameter.name in texts and "description" not in schema:
                schema["description"] = texts[parameter.name]
            properties[parameter.name] = schema
            if parameter.default is parameter.empty:
                required.append(parameter.name)
        self.function = function
        self.name: str = name
        self.description = description
        """The docstring's text before its first section (``Args:``...)."""
        self.parameters: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "required": required,
        }
        """The JSON schema of the arguments."""

    def __repr__(self) -> str:
        return f"<Tool {self.name!r} ({', '.join(self.parameters['properties'])})>"

    def spec(self) -> dict[str, Any]:
        """The tool as an OpenAI ``tools`` entry."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    async def invoke(self, arguments: str) -> str:
        """Call the function with the model's JSON ``arguments``; its result as text (a
        ``str`` as it is, anything else as JSON).

        A synchronous function runs on the node's event loop: make a tool that blocks (I/O,
        long computations) ``async``.

        Raises:
            ValueError: ``arguments`` is not a JSON object.
            TypeError: the arguments do not fit the function's parameters.
            Exception: whatever the function raises.
        """
        try:
            values = json.loads(arguments or "{}")
        except ValueError:
            raise ValueError(f"the arguments are not JSON: {arguments[:200]!r}") from None
        if not isinstance(values, dict):
            raise ValueError(f"the arguments must be a JSON object, got {arguments[:200]!r}")
        result = self.function(**values)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, str) else json.dumps(result, default=str)
