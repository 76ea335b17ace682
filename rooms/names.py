"""Display names: what may be one, and when two of them look alike.

A name is compared by its *keys*: NFKC-normalised, case-folded, and mapped through Unicode's
confusables table (UTS #39 "skeleton") as shipped by ``confusable_homoglyphs``. Two names whose
key sets meet could be mistaken for each other on screen (``alice``, ``аlice`` with a Cyrillic
а, ``ａｌｉｃｅ``, ``ALICE``, ``aIice``). Invisible and bidi control characters are refused
outright: they make names that look like other names without being confusable in the table.

The table in ``confusable_homoglyphs`` is symmetric (it lost the direction of confusables.txt),
so the skeleton maps every character to one representative of its class: the multi-character
prototype if the class has one (``m`` -> ``rn``), else its most connected member (the
prototype of a star), ties broken by code point. Equal skeletons is all that is compared.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from confusable_homoglyphs import confusables

NAME_MAX = 30
# Categories no display name may hold: controls, format characters (zero-width joiners, bidi
# overrides, word joiners), surrogates, private use, unassigned, line and paragraph separators.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Default_Ignorable_Code_Point characters outside those categories: they render as nothing
# (Hangul fillers, the combining grapheme joiner, variation selectors, the braille blank).
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
)


def _invisible(char: str) -> bool:
    point = ord(char)
    return any(low <= point <= high for low, high in _INVISIBLE_RANGES)


def normalize(name: str) -> str:
    """The form a name is shown and stored in: NFKC, outer spaces stripped, inner runs of
    spaces collapsed to one."""
    return " ".join(unicodedata.normalize("NFKC", name).split())


def problem(name: str) -> str | None:
    """Why ``name`` (as typed) cannot be a display name, or None if it can."""
    cleaned = normalize(name)
    if not cleaned:
        return "Choose a display name."
    if len(cleaned) > NAME_MAX:
        return f"A display name has at most {NAME_MAX} characters."
    for char in name:
        if unicodedata.category(char) in REFUSED_CATEGORIES or _invisible(char):
            return "A display name cannot contain invisible or control characters."
    if not any(unicodedata.category(c)[0] in "LN" for c in cleaned):
        return "A display name needs at least one letter or digit."
    return None


@lru_cache(maxsize=1)
def _representatives() -> dict[str, str]:
    """Character -> the representative of its confusable class."""
    table: dict[str, list[dict[str, str]]] = confusables.confusables_data
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        root = node
        while parent.get(root, root) != root:
            root = parent[root]
        parent[node] = root
        return root

    for char, entries in table.items():
        for entry in entries:
            a, b = find(char), find(entry["c"])
            if a != b:
                parent[a] = b
    members: dict[str, list[str]] = {}
    for node in {*table, *(e["c"] for entries in table.values() for e in entries)}:
        members.setdefault(find(node), []).append(node)
    chosen: dict[str, str] = {}
    for group in members.values():
        multi = sorted(node for node in group if len(node) > 1)
        if multi:
            best = multi[0]
        else:
            best = min(group, key=lambda node: (-len(table.get(node, ())), node))
        for node in group:
            if len(node) == 1:
                chosen[node] = best
    return chosen


def skeleton(text: str) -> str:
    """UTS #39 skeleton: NFD, each character replaced by its class representative, NFD; again
    until nothing changes (a multi-character representative may hold mapped characters)."""
    table = _representatives()
    current = unicodedata.normalize("NFD", text)
    for _ in range(4):
        mapped = unicodedata.normalize("NFD", "".join(table.get(c, c) for c in current))
        if mapped == current:
            break
        current = mapped
    return current


def keys(name: str) -> frozenset[str]:
    """The comparison keys of a name: two names are confusable when their key sets meet.

    Two keys because case folding and the table disagree on some letters: ``ALICE`` and
    ``alice`` meet after folding first; ``aIice`` (a capital i) and ``alice`` only after the
    table maps ``I`` to ``l`` before folding.
    """
    base = normalize(name)
    folded_first = skeleton(base.casefold())
    mapped_first = skeleton(skeleton(base).casefold())
    return frozenset({folded_first, mapped_first})


def confusable(a: str, b: str) -> bool:
    return bool(keys(a) & keys(b))
