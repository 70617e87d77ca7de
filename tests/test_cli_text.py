"""Text for people: long lists are cut short, with how many more there are."""

from __future__ import annotations

import pytest

from autonomy.cli._text import brief_list


@pytest.mark.parametrize(
    ("count", "limit", "expected"),
    [
        (0, 3, ""),
        (1, 3, "n0"),
        (3, 3, "n0, n1, n2"),
        (4, 3, "n0, n1, n2, ... and 1 more"),
        (100_000, 3, "n0, n1, n2, ... and 99,997 more"),
    ],
)
def test_brief_list(count: int, limit: int, expected: str) -> None:
    assert brief_list((f"n{i}" for i in range(count)), limit) == expected


def test_brief_list_names_ten_by_default() -> None:
    text = brief_list(f"node-{i}" for i in range(1_000))
    assert text.endswith(", node-9, ... and 990 more")
    assert len(text) < 200
