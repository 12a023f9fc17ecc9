"""The status every native routine returns (native/status.h) and the exception each one becomes.

`Status` mirrors the C enum el_status value for value (tests/test_native_status.py reads the header
to hold them equal); `error_for` is the one table from a failed status to edgellama's exception,
used by the compiled module, its NumPy twins and the argument checks of edgellama.native_args.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Optional

from .errors import InvalidParameterError, NativeError, NumericalError


class Status(IntEnum):
    """el_status of native/status.h."""
    OK = 0
    ERR_NOMEM = 1
    ERR_NONFINITE = 2
    ERR_TOKEN = 3
    ERR_SIZE = 4
    ERR_RANGE = 5
    ERR_MASK = 6


_SIZE = "a size or position is outside the buffer"

# failed status -> (exception class, what went wrong)
ERRORS = {
    Status.ERR_NOMEM: (NativeError, "out of memory"),
    Status.ERR_NONFINITE: (NumericalError, "logits contain NaN or infinity (after logit bias and penalties); "
                                           "check the model output and the penalty settings"),
    Status.ERR_TOKEN: (InvalidParameterError, "a token id is outside [0, vocab_size)"),
    Status.ERR_SIZE: (InvalidParameterError, _SIZE),
    Status.ERR_RANGE: (InvalidParameterError, _SIZE),
    Status.ERR_MASK: (InvalidParameterError, "the token mask allows no token of the vocabulary"),
}


def error_for(status: int, context: str, detail: Optional[str] = None) -> Exception:
    """The exception for a failed `status` of routine `context`; `detail`, when given, says what
    was wrong in place of the status's own words."""
    known = ERRORS.get(status)
    if known is None:
        return NativeError(f"{context}: unexpected native status {int(status)}")
    kind, message = known
    return kind(f"{context}: {detail or message}")
