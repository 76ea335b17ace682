"""A listener that stands in for a socket in cluster-level tests: it keeps every frame the
fan-out hands it and every close it is asked for."""

from __future__ import annotations

from typing import Any


class Tab:
    def __init__(self, user: str) -> None:
        self.user = user
        self.frames: list[dict[str, Any]] = []
        self.close_codes: list[int] = []

    def deliver(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def request_close(self, code: int) -> None:
        self.close_codes.append(code)

    @property
    def seqs(self) -> list[int]:
        return [int(f["seq"]) for f in self.frames if "seq" in f]
