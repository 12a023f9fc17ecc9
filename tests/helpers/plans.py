"""Reading a package's conversion plan in tests."""
from __future__ import annotations


def planned_weight(plan, name: str):
    """The WeightPlan of the source tensor `name` (a 2-D weight)."""
    from edgellama.converters.plan import EMBED, LAYER_WEIGHTS, LM_HEAD

    if name in (EMBED, LM_HEAD):
        return plan.embedding if name == EMBED else plan.lm_head
    layer = int(name.split(".")[2])
    kind = next(k for k, parts in LAYER_WEIGHTS.items() if any(f".{part}." in name for part in parts))
    return getattr(plan.layers[layer].weights, kind)
