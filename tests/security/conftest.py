"""Fixtures of the security tests (helpers in support.py)."""

from tests.security.support import keys, shared_smart_app, smart_app, world

__all__ = ["keys", "shared_smart_app", "smart_app", "world"]
