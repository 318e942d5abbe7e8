"""Test servers that run in threads: start(), stop(), and a with-block around them."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self


class Serving:
    """A server a test starts and stops, or uses as a context manager."""

    def start(self) -> Any:
        """Start serving."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
