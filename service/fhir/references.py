"""The one reference walker: copy a resource's JSON with its references rewritten.

Every place that rewrites references walks the resource through ``_walk``: a transaction
Bundle (entries' fullUrls to the ids the server gave), an import (a partner's ids to this
service's conditional references) and the outbox worker (this service's ids to a partner's).
What changes is only the function applied to what the walk finds:

- ``rewrite_references(value, rewrite)``: each ``reference`` string (Reference.reference);
- ``replace_references(value, replace)``: each Reference element (a JSON object with a
  ``reference`` string) as a whole, when ``replace`` returns a new element;
- ``rewrite_strings(value, rewrite)``: every string, with the name of the element it is the
  value of (a transaction's fullUrl may stand in any uri element, and in narrative).

Pure functions over JSON values: no I/O, no FHIR model. The value given is never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ElementRewrite = Callable[[dict[str, Any]], dict[str, Any] | None]
StringRewrite = Callable[[str | None, str], str]


def _walk(
    value: Any,
    element: ElementRewrite | None,
    string: StringRewrite | None,
    key: str | None = None,
) -> Any:
    """A copy of ``value``: Reference elements through ``element`` (None keeps the element and
    walks into it), strings through ``string`` with the key they are the value of (None for
    array items and the top)."""
    if isinstance(value, list):
        return [_walk(item, element, string) for item in value]
    if isinstance(value, dict):
        if element is not None and isinstance(value.get("reference"), str):
            replaced = element(value)
            if replaced is not None:
                return replaced
        return {k: _walk(v, element, string, k) for k, v in value.items()}
    if string is not None and isinstance(value, str):
        return string(key, value)
    return value


def rewrite_references(value: Any, rewrite: Callable[[str], str]) -> Any:
    """A copy of ``value`` with every ``reference`` string passed through ``rewrite``."""
    return _walk(value, None, lambda key, text: rewrite(text) if key == "reference" else text)


def replace_references(value: Any, replace: ElementRewrite) -> Any:
    """A copy of ``value`` with each Reference element replaced by what ``replace`` returns
    for it (the element is kept, and walked into, when it returns None)."""
    return _walk(value, replace, None)


def rewrite_strings(value: Any, rewrite: StringRewrite) -> Any:
    """A copy of ``value`` with every string passed through ``rewrite(key, text)``."""
    return _walk(value, None, rewrite)
