"""chatsite/by_identity.py: what the fan-out's encode and framed caches rely on."""

from __future__ import annotations

from chatsite.by_identity import ByIdentity


def test_a_value_is_computed_once_per_object_and_never_for_an_equal_one() -> None:
    calls: list[object] = []

    def compute(obj: dict[str, int]) -> str:
        calls.append(obj)
        return f"v{len(calls)}"

    cache: ByIdentity[dict[str, int], str] = ByIdentity(compute, keep=2)
    first, twin = {"a": 1}, {"a": 1}
    assert cache.get(first) == cache.get(first) == "v1"
    assert cache.get(twin) == "v2"  # equal but not the same object: its own value
    assert cache.get(first) == "v1"  # found again by identity, not only as the last one
    assert calls == [first, twin]


def test_only_the_last_keep_objects_are_remembered() -> None:
    calls = 0

    def compute(obj: object) -> int:
        nonlocal calls
        calls += 1
        return calls

    cache: ByIdentity[object, int] = ByIdentity(compute, keep=2)
    a, b, c = object(), object(), object()
    assert [cache.get(a), cache.get(b), cache.get(c)] == [1, 2, 3]
    assert cache.get(c) == 3 and cache.get(b) == 2  # still kept
    assert cache.get(a) == 4  # pushed out by c: computed again
