"""FHIRPath invariants compiled to Python closures, for the shapes that recur in R4.

Interpreting an invariant with fhirpathpy costs tens of microseconds per element; most R4
invariants are a handful of shapes (``x.exists()``, ``a implies b``, ``matches()``,
``count()`` comparisons, ``hasValue()``, ``empty()``, ``or``/``and`` of those,
``(a | b).count() <= 1``). ``compile_expression`` turns such an expression into a closure that
walks the JSON directly; it returns None for anything else (the caller interprets those).

The closures reproduce fhirpathpy's results, not only the specification's, so compiled and
interpreted invariants give the same verdicts (``tests/validation/test_compiled_invariants.py``
runs both over the official examples and mutated resources). Where fhirpathpy would take a road
this module does not model (a primitive's ``_name`` extension, a Quantity compared as a
quantity, a comparison of dates, a boolean operand that is not a boolean), a closure raises
``Fallback`` and the caller interprets that one evaluation. The single deliberate difference:
``hasValue()``, which fhirpathpy does not implement (it fails, so the invariant is reported as
not evaluated), is compiled as the FHIRPath specification defines it.

Values are lists of items ``(data, path)``: ``data`` is the JSON value, ``path`` the type path
fhirpathpy would give it (so choice elements such as ``value[x]`` resolve as they do there), or
``RAW`` for values computed by the expression (booleans, numbers, literals).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fhirpathpy.models import models
from fhirpathpy.parser import parse

RAW = "\x00raw"  # the path of a computed value (fhirpathpy keeps those unwrapped)
Item = tuple[Any, Any]
Coll = list[Item]


class Fallback(Exception):
    """This evaluation leaves the modelled road: interpret it with fhirpathpy instead."""


class NotCompiled(Exception):
    """The expression uses something this compiler does not model."""


class Env:
    """What one evaluation sees: ``$this`` and the environment variables."""

    __slots__ = ("resource", "root", "this")

    def __init__(self, this: Coll, resource: Any, root: Any) -> None:
        self.this = this
        self.resource = resource
        self.root = root


Fn = Callable[[Coll, Env], Coll]

_MODEL = models["r4"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_PATH2TYPE: dict[str, str] = _MODEL["path2Type"]
_children: dict[tuple[Any, str], tuple[str, list[str] | None]] = {}
_TRUE: Coll = [(True, RAW)]
_FALSE: Coll = [(False, RAW)]


def _bool(value: bool) -> Coll:
    return _TRUE if value else _FALSE


def item(data: Any, path: Any) -> Item:
    """An item as fhirpathpy's ResourceNode makes it: a resource's path is its type."""
    if isinstance(data, dict) and "resourceType" in data:
        return data, data["resourceType"]
    return data, path


def _child(path: Any, key: str) -> tuple[str, list[str] | None]:
    """fhirpathpy's path of ``key`` under ``path``, and its types when it is a choice."""
    found = _children.get((path, key))
    if found is None:
        parent = None if path is RAW else path
        child = f"{parent}.{key}" if parent else f"_.{key}"
        child = _ELSEWHERE.get(child, child)
        found = (child, _CHOICES.get(child))
        _children[(path, key)] = found
    return found


def _member(key: str) -> Fn:
    def member(items: Coll, env: Env) -> Coll:
        out: Coll = []
        for data, path in items:
            if not isinstance(data, dict):
                if key == "length":
                    raise Fallback
                continue
            child, types = _child(path, key)
            value: Any = None
            if types:
                for suffix in types:
                    if "_" + key + suffix in data:
                        raise Fallback
                    value = data.get(key + suffix)
                    if value is not None:
                        child += suffix
                        break
            else:
                if "_" + key in data:
                    raise Fallback
                value = data.get(key)
                if key == "extension":
                    child = "Extension"
            if value is None or value == []:
                continue
            child = _PATH2TYPE.get(child, child)
            if isinstance(value, list):
                out.extend(item(v, child) for v in value)
            else:
                out.append(item(value, child))
        return out

    return member


def _boolean_operand(coll: Coll) -> bool | None:
    """fhirpathpy's Boolean parameter: empty, or exactly one boolean."""
    if not coll:
        return None
    if len(coll) > 1:
        raise Fallback
    data = coll[0][0]
    if data is True or data is False:
        return bool(data)
    raise Fallback


def _logic(op: str, left: Fn, right: Fn) -> Fn:
    def logic(items: Coll, env: Env) -> Coll:
        a = _boolean_operand(left(items, env))
        b = _boolean_operand(right(items, env))
        if op == "and":
            if a is False or b is False:
                return _FALSE
            return _TRUE if a is True and b is True else []
        if op == "or":
            if a is True or b is True:
                return _TRUE
            return _FALSE if a is False and b is False else []
        if op == "xor":
            return [] if a is None or b is None else _bool(a != b)
        # implies
        if a is False:
            return _TRUE
        if a is True:
            return [] if b is None else _bool(b)
        return _TRUE if b is True else []

    return logic


def _data_equal(a: Coll, b: Coll) -> bool:
    if len(a) != len(b):
        return False
    (x, p), (y, q) = a[0], b[0]
    if p == "Quantity" or q == "Quantity":
        raise Fallback  # a Quantity compares as a quantity there
    return bool(x == y)


def _equality(negate: bool, left: Fn, right: Fn) -> Fn:
    def equality(items: Coll, env: Env) -> Coll:
        a, b = left(items, env), right(items, env)
        if not a or not b:
            return []
        return _bool(_data_equal(a, b) != negate)

    return equality


def _number(coll: Coll) -> Any:
    if len(coll) != 1:
        raise Fallback
    data = coll[0][0]
    if isinstance(data, float):
        return Decimal(str(data))
    if isinstance(data, int | Decimal) and not isinstance(data, bool):
        return data
    raise Fallback


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: bool(a < b),
    ">": lambda a, b: bool(a > b),
    "<=": lambda a, b: bool(a <= b),
    ">=": lambda a, b: bool(a >= b),
}


def _comparison(op: str, left: Fn, right: Fn) -> Fn:
    compare = _COMPARE[op]

    def comparison(items: Coll, env: Env) -> Coll:
        a, b = left(items, env), right(items, env)
        if not a or not b or a[0][0] is None or b[0][0] is None:
            return []
        return _bool(compare(_number(a), _number(b)))

    return comparison


def _plus(left: Fn, right: Fn) -> Fn:
    def plus(items: Coll, env: Env) -> Coll:
        a, b = left(items, env), right(items, env)
        if not a or not b:
            return []
        x, y = a[0][0], b[0][0]
        if len(a) != 1 or len(b) != 1 or a[0][1] is not RAW or b[0][1] is not RAW:
            raise Fallback
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y)):
            raise Fallback
        return [(x + y, RAW)]

    return plus


def _distinct(coll: Coll) -> Coll:
    """fhirpathpy's distinct(): first of each JSON-equal value; the paths of elements are
    dropped (computed values, such as a list of literals, stay computed)."""
    computed = [path is RAW for _, path in coll]
    if any(computed) and not all(computed):
        raise Fallback
    seen: dict[str, Item] = {}
    for data, path in coll:
        try:
            key = json.dumps(data, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise Fallback from exc
        if key not in seen:
            seen[key] = (data, RAW) if path is RAW else item(data, None)
    return list(seen.values())


def _union(left: Fn, right: Fn) -> Fn:
    def union(items: Coll, env: Env) -> Coll:
        return _distinct(left(items, env) + right(items, env))

    return union


def _membership(op: str, left: Fn, right: Fn) -> Fn:
    def membership(items: Coll, env: Env) -> Coll:
        a, b = left(items, env), right(items, env)
        if op == "contains":
            a, b = b, a  # "b contains a" is "a in b"
            if not a:
                return []
            if not b:
                return _FALSE
        else:
            if not a:
                return []
            if not b:
                return _FALSE
        if len(a) > 1:
            raise Fallback
        wanted = a[0][0]
        return _bool(any(data == wanted for data, _ in b))

    return membership


def _then(first: Fn, second: Fn) -> Fn:
    def then(items: Coll, env: Env) -> Coll:
        return second(first(items, env), env)

    return then


def _literal(value: Any) -> Fn:
    coll: Coll = [(value, RAW)]

    def literal(items: Coll, env: Env) -> Coll:
        return coll

    return literal


def _this(items: Coll, env: Env) -> Coll:
    return env.this


def _macro_each(criteria: Fn, data_item: Item, env: Env) -> Coll:
    saved = env.this
    env.this = [data_item]
    try:
        return criteria(env.this, env)
    finally:
        env.this = saved


def _truthy(result: Coll) -> bool:
    """fhirpathpy's where(): the first result's truth (a node is always true)."""
    if not result:
        return False
    data, path = result[0]
    if path is not RAW:
        return True
    if isinstance(data, bool):
        return data
    raise Fallback


def _where(criteria: Fn) -> Fn:
    def where(items: Coll, env: Env) -> Coll:
        return [i for i in items if _truthy(_macro_each(criteria, i, env))]

    return where


def _exists(criteria: Fn | None) -> Fn:
    if criteria is None:
        return lambda items, env: _bool(bool(items))
    where = _where(criteria)
    return lambda items, env: _bool(bool(where(items, env)))


def _all(criteria: Fn) -> Fn:
    def all_(items: Coll, env: Env) -> Coll:
        for i in items:
            result = _macro_each(criteria, i, env)
            if not (len(result) == 1 and result[0][0] == True):  # noqa: E712 - as fhirpathpy
                return _FALSE
        return _TRUE

    return all_


def _select(criteria: Fn) -> Fn:
    def select(items: Coll, env: Env) -> Coll:
        out: Coll = []
        for i in items:
            out.extend(_macro_each(criteria, i, env))
        return out

    return select


def _not(items: Coll, env: Env) -> Coll:
    if len(items) != 1:
        return []
    data = items[0][0]
    return _bool(not data) if isinstance(data, bool) else _FALSE


def _has_value(items: Coll, env: Env) -> Coll:
    """FHIRPath hasValue(): a single primitive that has a value."""
    if len(items) != 1:
        return _FALSE
    data = items[0][0]
    return _bool(data is not None and not isinstance(data, dict | list))


def _matches(pattern: str) -> Fn:
    compiled = re.compile(pattern, re.DOTALL)

    def matches(items: Coll, env: Env) -> Coll:
        if not items:
            return []
        if len(items) != 1 or not isinstance(items[0][0], str):
            raise Fallback
        return _bool(compiled.search(items[0][0]) is not None)

    return matches


def _string_test(name: str, argument: str) -> Fn:
    def string_test(items: Coll, env: Env) -> Coll:
        if not items:
            return []
        if len(items) != 1 or not isinstance(items[0][0], str):
            raise Fallback
        text: str = items[0][0]
        return _bool(text.startswith(argument) if name == "startsWith" else argument in text)

    return string_test


def _first(items: Coll, env: Env) -> Coll:
    return items[:1]


def _is_distinct(items: Coll, env: Env) -> Coll:
    return _bool(len(items) == len(_distinct(items)))


_PLAIN: dict[str, Fn] = {
    "empty": lambda items, env: _bool(not items),
    "count": lambda items, env: [(len(items), RAW)],
    "not": _not,
    "hasValue": _has_value,
    "first": _first,
    "isDistinct": _is_distinct,
    "distinct": lambda items, env: _distinct(items),
}


def _string_literal(node: dict[str, Any]) -> str:
    """The value of a string-literal argument (only plain ones are compiled)."""
    term = _unwrap(node)
    if term.get("type") != "StringLiteral":
        raise NotCompiled
    text = str(term["text"])
    if "\\" in text:
        raise NotCompiled
    return text[1:-1]


def _unwrap(node: dict[str, Any]) -> dict[str, Any]:
    while node.get("type") in ("TermExpression", "LiteralTerm") and node.get("children"):
        node = node["children"][0]
    return node


def _function(node: dict[str, Any]) -> Fn:
    functn = node["children"][0]
    name = str(functn["children"][0]["text"])
    params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
    if not params and name in _PLAIN:
        return _PLAIN[name]
    if name == "exists" and len(params) <= 1:
        return _exists(_compile(params[0]) if params else None)
    if len(params) != 1:
        raise NotCompiled
    if name == "where":
        return _where(_compile(params[0]))
    if name == "all":
        return _all(_compile(params[0]))
    if name == "select":
        return _select(_compile(params[0]))
    if name == "matches":
        return _matches(_string_literal(params[0]))
    if name in ("startsWith", "contains"):
        return _string_test(name, _string_literal(params[0]))
    raise NotCompiled


def _invocation(node: dict[str, Any]) -> Fn:
    kind = node["type"]
    if kind == "MemberInvocation":
        key = str(node["children"][0]["text"]).replace("`", "")
        if key[:1].isupper() or key.startswith('"'):
            raise NotCompiled  # a type name, resolved by the interpreter's own rules
        return _member(key)
    if kind == "FunctionInvocation":
        return _function(node)
    if kind == "ThisInvocation":
        return _this
    raise NotCompiled


def _literal_term(node: dict[str, Any]) -> Fn:
    kind = node["type"]
    text = str(node.get("text", ""))
    if kind == "StringLiteral":
        if "\\" in text:
            raise NotCompiled
        return _literal(text[1:-1])
    if kind == "BooleanLiteral":
        return _literal(text == "true")
    if kind == "NumberLiteral":
        number = Decimal(text)
        return _literal(int(number) if number == int(number) else number)
    if kind == "NullLiteral":
        return lambda items, env: []
    raise NotCompiled


def _constant(node: dict[str, Any]) -> Fn:
    try:
        name = str(node["children"][0]["children"][0]["text"]).replace("`", "")
    except (KeyError, IndexError) as exc:
        raise NotCompiled from exc
    if name == "resource":
        return lambda items, env: [] if env.resource is None else [item(env.resource, None)]
    if name == "rootResource":
        return lambda items, env: [] if env.root is None else [item(env.root, None)]
    raise NotCompiled


def _binary(node: dict[str, Any]) -> Fn:
    kind = node["type"]
    op = node["terminalNodeText"][0]
    left, right = (_compile(c) for c in node["children"])
    if kind in ("AndExpression", "OrExpression", "ImpliesExpression"):
        return _logic(op, left, right)
    if kind == "EqualityExpression" and op in ("=", "!="):
        return _equality(op == "!=", left, right)
    if kind == "InequalityExpression":
        return _comparison(op, left, right)
    if kind == "UnionExpression":
        return _union(left, right)
    if kind == "MembershipExpression":
        return _membership(op, left, right)
    if kind == "AdditiveExpression" and op == "+":
        return _plus(left, right)
    raise NotCompiled


_BINARY = frozenset(
    {
        "AndExpression",
        "OrExpression",
        "ImpliesExpression",
        "EqualityExpression",
        "InequalityExpression",
        "UnionExpression",
        "MembershipExpression",
        "AdditiveExpression",
    }
)


def _compile(node: dict[str, Any]) -> Fn:
    kind = node.get("type")
    children = node.get("children", [])
    if kind is None or kind in ("EntireExpression", "TermExpression", "ParenthesizedTerm"):
        if len(children) != 1:
            raise NotCompiled
        return _compile(children[0])
    if kind == "InvocationTerm":
        return _invocation(children[0])
    if kind == "InvocationExpression":
        return _then(_compile(children[0]), _invocation(children[1]))
    if kind == "LiteralTerm":
        return _literal_term(children[0])
    if kind == "ExternalConstantTerm":
        return _constant(node)
    if kind in _BINARY:
        return _binary(node)
    raise NotCompiled


def compile_expression(expression: str) -> Fn | None:
    """A closure computing ``expression`` as fhirpathpy does, or None if it is not modelled."""
    try:
        return _compile(parse(expression))  # type: ignore[no-untyped-call]
    except (NotCompiled, KeyError, IndexError, ValueError, ArithmeticError):
        return None
    except Exception:  # noqa: BLE001 - the parser raises bare Exceptions
        return None


def evaluate(compiled: Fn, node: Any, type_path: str, resource: Any, root: Any) -> bool:
    """The verdict of a compiled invariant on ``node`` (raises Fallback off the modelled road):
    it holds unless the result is a single false, as with fhirpathpy."""
    start = [item(node, type_path)]
    result = compiled(start, Env(start, resource, root))
    return not (len(result) == 1 and result[0][0] == False)  # noqa: E712 - as fhirpathpy
