"""JSON from servers we do not trust, parsed with bounds: a document nested deeper than any real
discovery or Status document is refused before the parser recurses into it (json.loads raises
RecursionError, not ValueError, on a few thousand `[`; that once froze a verdict), and every way the
bytes can be wrong is one exception with words for a condition's message. Pure."""

from __future__ import annotations

import json
import re
from typing import Any

# discovery documents nest 5 deep, OpenAPI and aggregated discovery a few dozen at most
MAX_DEPTH = 100
# a string (an unterminated one runs to the end: one pass, never a rescan from each later quote) or a
# bracket; whatever lies between is skipped by the search itself
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


class DocumentError(ValueError):
    """Why the bytes are not a JSON document we read; the message names it for a condition."""


def nesting_depth_over(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether brackets outside strings nest deeper than `limit`; stops at the first that does, so a
    megabyte of `[` costs as little as a short document."""
    depth = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        if token[:1] == b'"':
            continue
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads(data: bytes, limit: int = MAX_DEPTH) -> Any:
    """The document, or DocumentError saying what is wrong with it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"body is not JSON: not UTF-8 (byte {exc.start})") from None
    if nesting_depth_over(data, limit):
        raise DocumentError(f"body nests deeper than {limit} levels")
    try:
        return json.loads(text)
    except RecursionError:  # the scan above should have refused it; never let it escape
        raise DocumentError(f"body nests deeper than {limit} levels") from None
    except ValueError as exc:  # also Python's limit on digits of an int (4,300)
        words = str(exc).split(":")[0] if "digits" in str(exc) else "body is not JSON"
        raise DocumentError(words) from None
