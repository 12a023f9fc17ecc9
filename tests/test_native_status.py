"""One status for every native routine (native/status.h) and one table from a failed status to
edgellama's exception (edgellama.native_status), for the compiled module and its NumPy twins."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from helpers.backends import BACKENDS, _native, needs_native

from edgellama.errors import EdgeLlamaError, InvalidParameterError, NativeError, NumericalError
from edgellama.native_status import ERRORS, Status, error_for
from edgellama.sampling import SamplingParams

HEADER = Path(__file__).resolve().parents[1] / "native" / "status.h"

# the class each failed status must raise, and the builtin that class must derive from
EXPECTED = {
    Status.ERR_NOMEM: (NativeError, RuntimeError),
    Status.ERR_NONFINITE: (NumericalError, ArithmeticError),
    Status.ERR_TOKEN: (InvalidParameterError, ValueError),
    Status.ERR_SIZE: (InvalidParameterError, ValueError),
    Status.ERR_RANGE: (InvalidParameterError, ValueError),
    Status.ERR_MASK: (InvalidParameterError, ValueError),
}


def header_statuses() -> dict:
    """el_status of native/status.h: name (without EL_) -> value."""
    body = re.search(r"typedef enum el_status \{(.*?)\} el_status;", HEADER.read_text(), re.S).group(1)
    return {name: int(value) for name, value in re.findall(r"EL_(\w+) = (\d+)", body)}


def test_python_statuses_are_those_of_the_header():
    assert header_statuses() == {status.name: status.value for status in Status}
    assert len(header_statuses()) == 7


@needs_native
def test_compiled_statuses_are_those_of_the_header():
    assert _native.STATUSES == header_statuses()


def test_every_failed_status_has_one_exception():
    assert set(EXPECTED) == set(Status) - {Status.OK} == set(ERRORS)


@pytest.mark.parametrize("status", sorted(EXPECTED), ids=lambda status: status.name)
def test_each_status_raises_its_exception_class(status):
    ours, builtin = EXPECTED[status]
    with pytest.raises(ours) as info:
        raise error_for(int(status), "el_routine")
    assert type(info.value) is ours
    assert isinstance(info.value, builtin) and isinstance(info.value, EdgeLlamaError)
    assert str(info.value) == f"el_routine: {ERRORS[status][1]}"
    assert str(error_for(status, "el_routine", "n=-1 is negative")) == "el_routine: n=-1 is negative"


@pytest.mark.parametrize("status", [Status.OK, 7, -1])
def test_no_failure_or_an_unknown_status_is_a_native_error(status):
    err = error_for(status, "el_routine")
    assert type(err) is NativeError and f"status {int(status)}" in str(err)


@pytest.mark.parametrize("module", BACKENDS)
def test_statuses_of_the_c_routines_reach_the_caller_through_the_table(module):
    """Failures found by the routine itself (not by the argument checks) come back as its status."""
    sampler = module.Sampler(8, SamplingParams(seed=0, repeat_penalty=1.5), 0)
    logits = np.zeros(8, np.float32)
    logits[2] = np.nan
    with pytest.raises(NumericalError) as nonfinite:
        sampler.sample(logits, np.zeros(0, np.int32))
    with pytest.raises(InvalidParameterError) as token:
        sampler.sample(np.zeros(8, np.float32), np.array([1, 8], np.int32))
    assert str(nonfinite.value) == f"Sampler.sample: {ERRORS[Status.ERR_NONFINITE][1]}"
    assert str(token.value) == f"Sampler.sample: {ERRORS[Status.ERR_TOKEN][1]}"


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("call, message", [
    (lambda m: m.Sampler(0, SamplingParams(), 0), "vocab_size=0"),
    (lambda m: m.Sampler(4, SamplingParams(logit_bias={4: 1.0}), 0), "logit_bias names token 4"),
    (lambda m: m.Sampler(4, SamplingParams(), 0).sample(np.zeros(5, np.float32), np.zeros(0, np.int32)),
     r"logits have shape \(5,\); expected \(4,\)"),
    (lambda m: m.kv_move(np.zeros((1, 2, 6, 4), np.float32), 3, 0, 4), r"dst \[3, 3 \+ 4\)"),
    (lambda m: m.kv_rotate(np.zeros((1, 2, 6, 4), np.float32), 0, 1, np.ones(3), np.ones(3)), "cos_a and sin_a"),
    (lambda m: m.swiglu(np.zeros(3, np.float32), np.zeros(4, np.float32)), "swiglu: shapes"),
])
def test_arguments_are_refused_alike_before_the_routine_runs(module, call, message):
    with pytest.raises(InvalidParameterError, match=message):
        call(module)
