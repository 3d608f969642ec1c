"""Copies of a kept answer: shapes copied, and nothing shared a caller can change."""

from __future__ import annotations

import pytest

from worker.esi.copies import JsonCopier


@pytest.mark.parametrize(
    "value",
    [
        {"name": "Pyerite", "volume": 0.01, "published": True, "icon_id": None},
        [{"order_id": 1, "price": 4.5}, {"order_id": 2, "price": 5.0}],
        [30000142, 30000144],
        [],
        "text",
        42,
    ],
    ids=["object", "objects", "ids", "empty", "string", "number"],
)
def test_plain_shapes_are_copied_equal(value) -> None:
    # given / when
    copier = JsonCopier.of(value, 100)

    # then
    assert copier is not None
    assert copier.copy() == value and copier.size == 400


def test_a_copy_shares_no_container_with_the_kept_answer() -> None:
    # given
    kept = [{"order_id": 1, "price": 4.5}]
    copier = JsonCopier.of(kept, 30)
    assert copier is not None

    # when
    copy = copier.copy()
    copy[0]["price"] = 0.0
    copy.append({})

    # then
    assert copier.copy() == [{"order_id": 1, "price": 4.5}]


@pytest.mark.parametrize(
    "value",
    [
        {"dogma_attributes": [{"attribute_id": 1, "value": 2.0}]},
        [{"items": [1, 2]}],
        [[1, 2], [3]],
        [{"a": 1}, 2],
    ],
    ids=["nested-object", "nested-list-in-objects", "lists", "mixed"],
)
def test_nested_shapes_are_not_kept(value) -> None:
    # given / when / then
    assert JsonCopier.of(value, 100) is None
