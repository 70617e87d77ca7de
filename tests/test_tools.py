"""Tools: the JSON schema a model sees, built from type hints and docstrings, and the call."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import pytest

from autonomy._tools import Tool, schema_of


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Any, {}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (list, {"type": "array"}),
        (tuple[str, ...], {"type": "array", "items": {"type": "string"}}),
        (
            tuple[str, int],
            {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
        ),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (dict, {"type": "object"}),
        (Literal["a", "b"], {"enum": ["a", "b"]}),
        (Color, {"enum": ["red", "blue"]}),
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (Annotated[str, "a city"], {"type": "string", "description": "a city"}),
    ],
)
def test_a_type_hint_becomes_its_json_schema(hint: Any, schema: dict[str, Any]) -> None:
    assert schema_of(hint) == schema


@pytest.mark.parametrize("hint", [object, bytes, type(len)])
def test_a_type_json_cannot_carry_is_refused(hint: Any) -> None:
    with pytest.raises(TypeError, match="cannot be described"):
        schema_of(hint)


def weather(city: str, days: int = 1, unit: Literal["C", "F"] = "C") -> str:
    """Forecast the weather.

    Use it for any question about the weather.

    Args:
        city: The city's name,
            in English.
        days (int): How many days ahead.

    Returns:
        The forecast.
    """
    return f"{city}: sunny for {days} days ({unit})"


async def add(a: int, b: int) -> dict[str, int]:
    """Add two numbers."""
    return {"sum": a + b}


def test_a_function_is_described_by_its_signature_and_docstring() -> None:
    tool = Tool(weather)
    assert tool.spec() == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Forecast the weather.\n\nUse it for any question about the weather.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name, in English."},
                    "days": {"type": "integer", "description": "How many days ahead."},
                    "unit": {"enum": ["C", "F"]},
                },
                "required": ["city"],
            },
        },
    }
    assert repr(tool) == "<Tool 'weather' (city, days, unit)>"


def test_a_function_without_docstring_or_hints_is_still_a_tool() -> None:
    def ping(target):  # type: ignore[no-untyped-def]
        return "pong"

    spec = Tool(ping).spec()["function"]
    assert "description" not in spec
    assert spec["parameters"]["properties"] == {"target": {}}


async def test_a_tool_is_called_with_the_models_json_arguments_sync_or_async() -> None:
    assert await Tool(weather).invoke('{"city": "Oslo", "days": 2}') == "Oslo: sunny for 2 days (C)"
    assert await Tool(add).invoke('{"a": 2, "b": 3}') == '{"sum": 5}'


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ("{not json", ValueError),
        ("[1, 2]", ValueError),
        ('{"town": "Oslo"}', TypeError),
        ("{}", TypeError),
    ],
)
async def test_arguments_that_do_not_fit_raise(arguments: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await Tool(weather).invoke(arguments)


def test_what_a_model_cannot_call_is_refused_when_the_tool_is_made() -> None:
    def spread(*values: int) -> int:
        return 0

    def opaque(thing: object) -> None:
        pass

    with pytest.raises(TypeError, match=r"\*args"):
        Tool(spread)
    with pytest.raises(TypeError, match="parameter 'thing'"):
        Tool(opaque)
    with pytest.raises(TypeError, match="name"):
        Tool(lambda: None)
    with pytest.raises(TypeError, match="function"):
        Tool("weather")  # type: ignore[arg-type]
