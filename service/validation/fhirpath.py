"""Evaluate FHIRPath invariants with fhirpathpy and the R4 model: https://hl7.org/fhirpath/."""

from __future__ import annotations

import itertools
import re
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

_TRACE = re.compile(r"\.trace\('[^']*'(?:,[^()]*)?\)")


class InvariantEngine:
    """Compile each invariant once and answer whether it holds on a node."""

    def __init__(self) -> None:
        self._compiled: dict[str, Any] = {}

    def holds(
        self,
        node: Any,
        type_path: str,
        expression: str,
        resource: dict[str, Any] | None,
        root: dict[str, Any] | None,
    ) -> bool | None:
        """True or False, or None when fhirpathpy cannot evaluate the expression here."""
        compiled = self._compiled.get(expression)
        if compiled is None:
            # trace() would print to standard output; it does not change the result
            quiet = _TRACE.sub("", expression)
            try:
                compiled = compile_fhirpath(quiet, models["r4"])
            except Exception:  # noqa: BLE001 - fhirpathpy raises bare Exceptions
                return None
            self._compiled[expression] = compiled
        try:
            typed = ResourceNode.create_node(node, type_path)  # type: ignore[no-untyped-call]
            result = compiled(typed, {"resource": resource, "rootResource": root})
        except Exception:  # noqa: BLE001 - fhirpathpy raises bare Exceptions
            return None
        return result != [False]

    def compiles(self, expression: str) -> str | None:
        """None if ``expression`` is valid FHIRPath, else what is wrong with it.

        fhirpathpy's own parser recovers from syntax errors silently, so the expression is
        parsed here with its grammar and an error listener that keeps the first error.
        """
        listener = _FirstError()
        lexer = FHIRPathLexer(InputStream(expression))
        lexer.removeErrorListeners()
        lexer.addErrorListener(listener)
        tokens = CommonTokenStream(lexer)
        parser = FHIRPathParser(tokens)
        parser.removeErrorListeners()
        parser.addErrorListener(listener)
        parser.expression()
        if listener.message is None and tokens.LA(1) != Token.EOF:
            listener.message = f"unexpected {tokens.LT(1).text!r} after the expression"
        if listener.message is None:
            texts = [t.text for t in tokens.tokens]
            for name, following in itertools.pairwise(texts):
                if following == "(" and name.isidentifier() and name not in invocation_registry:
                    return f"{name}() is not a FHIRPath function"
        if listener.message is None:
            try:
                compile_fhirpath(_TRACE.sub("", expression), models["r4"])
            except Exception as exc:  # noqa: BLE001 - fhirpathpy raises bare Exceptions
                return str(exc) or type(exc).__name__
        return listener.message


class _FirstError(ErrorListener):  # type: ignore[misc]
    """Keep the first syntax error an ANTLR lexer or parser reports."""

    def __init__(self) -> None:
        self.message: str | None = None

    def syntaxError(  # noqa: N802 - the ANTLR listener interface
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        if self.message is None:
            self.message = f"column {column + 1}: {msg}"
