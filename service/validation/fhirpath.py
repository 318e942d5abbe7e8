"""Evaluate FHIRPath invariants: compiled closures for the shapes that recur
(``fhirpath_compiled.py``), fhirpathpy with the R4 model for the rest: https://hl7.org/fhirpath/.

Some R4 invariants were published with an expression that says something other than their
text; ``CORRECTED`` replaces those (exactly as published) by what the text means, as the HL7
reference validator does (``FHIRPathExpressionFixer`` in org.hl7.fhir.validation).
"""

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

from service.validation.fhirpath_compiled import Fallback, Fn, compile_expression, evaluate

_TRACE = re.compile(r"\.trace\('[^']*'(?:,[^()]*)?\)")

# R4 invariants whose published expression contradicts their text (the specification's text is
# normative; FHIRPath expressions are how it is tested), read as the reference validator reads
# them (org.hl7.fhir.validation FHIRPathExpressionFixer, the R4 entries):
# - que-12 (Questionnaire.item, https://hl7.org/fhir/R4/questionnaire.html#invs): "If there are
#   more than one enableWhen, enableBehavior must be specified", published as
#   ``enableWhen.count() > 2``, which lets two conditions through without enableBehavior; the
#   text and the element's definition ("enableBehavior ... SHALL be specified if there is more
#   than one enableWhen") say two already need it: ``>= 2``.
# - dom-6 (DomainResource, best practice: a narrative): a contained resource is described by its
#   container's narrative (https://hl7.org/fhir/R4/references.html#contained), so only the
#   root resource is asked for one.
# - bdl-8 (Bundle.entry): "fullUrl cannot be a version specific reference" says nothing of an
#   entry without fullUrl; the corrected form holds there instead of answering empty.
# - ras-2 (RiskAssessment.prediction): a probability that is a Range is not compared with 100.
# - The R4 ``name.matches(...)`` of the conformance resources (cnl-0/vsd-0 style, a warning)
#   only concerns a name that is present.
CORRECTED = {
    "enableWhen.count() > 2 implies enableBehavior.exists()": (
        "enableWhen.count() >= 2 implies enableBehavior.exists()"
    ),
    "text.`div`.exists()": "(%rootResource != $this) or text.`div`.exists()",
    "fullUrl.contains('/_history/').not()": (
        "fullUrl.exists() implies fullUrl.contains('/_history/').not()"
    ),
    "probability is decimal implies (probability as decimal) <= 100": (
        "(probability.exists() and (probability is decimal)) implies "
        "((probability as decimal) <= 100)"
    ),
    "name.matches('[A-Z]([A-Za-z0-9_]){0,254}')": (
        "name.exists() implies name.matches('[A-Z]([A-Za-z0-9_]){0,254}')"
    ),
}


def corrected(expression: str) -> str:
    """The expression the reference validator evaluates for a published R4 invariant."""
    return CORRECTED.get(expression, expression)


class InvariantEngine:
    """Compile each invariant once and answer whether it holds on a node.

    With ``compiled`` (the default) an expression of a recurring shape runs as a Python closure
    and anything else through fhirpathpy; without, everything goes through fhirpathpy (the
    reference the compiled closures are tested against).
    """

    def __init__(self, compiled: bool = True) -> None:
        self._compiled: dict[str, Any] = {}
        self._closures: dict[str, Fn | None] = {}
        self._use_closures = compiled

    def holds(
        self,
        node: Any,
        type_path: str,
        expression: str,
        resource: dict[str, Any] | None,
        root: dict[str, Any] | None,
    ) -> bool | None:
        """True or False, or None when fhirpathpy cannot evaluate the expression here."""
        expression = CORRECTED.get(expression, expression)
        if self._use_closures:
            closure = self._closures.get(expression, _UNSEEN)
            if closure is _UNSEEN:
                closure = compile_expression(_TRACE.sub("", expression))
                self._closures[expression] = closure
            if closure is not None:
                try:
                    return evaluate(closure, node, type_path, resource, root)
                except Fallback:
                    pass
        return self.interpret(node, type_path, expression, resource, root)

    def interpret(
        self,
        node: Any,
        type_path: str,
        expression: str,
        resource: dict[str, Any] | None,
        root: dict[str, Any] | None,
    ) -> bool | None:
        """``holds`` by fhirpathpy alone (the expression as given, not corrected)."""
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


_UNSEEN: Any = object()


class _FirstError(ErrorListener):  # type: ignore[misc]
    """Keep the first syntax error an ANTLR lexer or parser reports."""

    def __init__(self) -> None:
        self.message: str | None = None

    def syntaxError(  # noqa: N802 - the ANTLR listener interface
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        if self.message is None:
            self.message = f"column {column + 1}: {msg}"
