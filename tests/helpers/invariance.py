"""Batch invariance through a loaded model: the logits after the same tokens, however the context got
there.

    from helpers.invariance import assert_runs_agree
    assert_runs_agree(model, ids, reference, firsts=(1, 3, 7), detour=[1, 2, 3], kept=6)
"""
from __future__ import annotations

import numpy as np


def assert_runs_agree(model, ids, reference, firsts, detour, kept):
    """The logits after `ids` equal `reference` bit for bit when reached by a prompt of ids[:first] then
    one decode step per token, for each of `firsts`, and by reusing the cached prefix of `kept` tokens after
    another continuation (ids[:kept] + detour) was run first."""
    for first in firsts:
        ctx = model.new_context()
        logits = ctx.append(ids[:first])
        for token in ids[first:]:
            logits = ctx.append([token])
        np.testing.assert_array_equal(logits, reference, err_msg=f"prompt of {first}, then steps")
    ctx = model.new_context()
    ctx.append(list(ids[:kept]) + list(detour))
    assert ctx.reuse_prefix(np.array(ids)) == kept
    np.testing.assert_array_equal(ctx.append(ids[kept:]), reference, err_msg="after a reused prefix")
