"""A base for objects that hold a resource and are used in ``with`` blocks."""

from __future__ import annotations

from typing import Self


class Closeable:
    def close(self) -> None:
        """Release what the object holds; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
