"""Return codes of the native routines (native/sampler.h, native/kvcache.h, native/halfconv.h)
and the exception each one becomes; shared by the compiled module and its NumPy twin."""
from __future__ import annotations

from .errors import InvalidParameterError, NativeError, NumericalError

OK = 0
ERR_NOMEM = 1
ERR_NONFINITE = 2
ERR_TOKEN = 3
ERR_SIZE = 4
ERR_RANGE = 5


def error_for(code: int, context: str) -> Exception:
    """The exception for a return code of the native routines."""
    if code == ERR_NONFINITE:
        return NumericalError(f"{context}: logits contain NaN or infinity (after logit bias and "
                              "penalties); check the model output and the penalty settings")
    if code == ERR_NOMEM:
        return NativeError(f"{context}: out of memory")
    if code == ERR_TOKEN:
        return InvalidParameterError(f"{context}: a token id is outside [0, vocab_size)")
    if code in (ERR_SIZE, ERR_RANGE):
        return InvalidParameterError(f"{context}: a size or position is outside the buffer")
    return NativeError(f"{context}: unknown native error code {code}")
