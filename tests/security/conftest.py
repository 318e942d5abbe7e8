"""Fixtures of the security tests (helpers in support.py)."""

from tests.security.support import keys, smart_app, world

__all__ = ["keys", "smart_app", "world"]
