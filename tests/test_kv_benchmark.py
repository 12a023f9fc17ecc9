"""benchmarks/kv_cache.py's byte ceiling on the default model: the bytes a decode step reads at depth 0
against at depth D, from the package's weights and its cache rows, which README's table of bytes per
token of context gives for SmolLM2 (30 layers, 3 KV heads of 64: keys and values, 45 KiB float32,
22.5 KiB float16, 12.7 KiB int8)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # benchmarks/ is not installed: importable from the repository root
    sys.path.insert(0, str(ROOT))

CACHE_BYTES_PER_TOKEN = {"float32": 46080, "float16": 23040, "int8": 12960}


@pytest.mark.parametrize("kv", sorted(CACHE_BYTES_PER_TOKEN))
def test_byte_ceiling_counts_weights_and_rows(smollm2_int4_package, kv):
    from benchmarks.kv_cache import byte_ceiling
    from benchmarks.suite.onnx_weights import bytes_read_per_token

    weights = bytes_read_per_token(Path(smollm2_int4_package) / "model.onnx")
    assert 90e6 < weights < 110e6                  # the int4 package's matrices, its tied table once
    row = CACHE_BYTES_PER_TOKEN[kv]
    want = (weights + row * 64) / (weights + row * (2048 + 64))
    assert byte_ceiling(smollm2_int4_package, kv, 2048, 128) == pytest.approx(want, rel=1e-12)
    assert byte_ceiling(smollm2_int4_package, kv, 0, 128) == pytest.approx(1.0)


def test_byte_ceiling_orders_the_types(smollm2_int4_package):
    from benchmarks.kv_cache import byte_ceiling

    ceilings = [byte_ceiling(smollm2_int4_package, kv, 2048, 128) for kv in ("float32", "float16", "int8")]
    assert ceilings == sorted(ceilings)


def _result(peers: dict) -> dict:
    from benchmarks.kv_cache import TYPES

    speed = {f"edgellama int4, {kv} cache": {"0": 200.0, "2048": 100.0} for kv in TYPES}
    speed.update(peers)
    return {"threads": 2, "cpu": "test", "speed": speed,
            "memory": {kv: {"peak_rss_bytes": 400 << 20} for kv in TYPES},
            "perplexity": {kv: 20.0 for kv in TYPES}, "perplexity_fp32": {kv: 19.0 for kv in TYPES}}


@pytest.mark.parametrize("llamacpp", [False, True], ids=["genai", "genai+llamacpp"])
def test_the_report_has_a_row_and_a_ratio_for_each_peer_measured(smollm2_int4_package, llamacpp):
    from benchmarks.kv_cache import GENAI, LLAMACPP, TYPES, report

    peers = {GENAI: {"0": 150.0, "2048": 50.0}}
    if llamacpp:
        peers.update({name: {"0": 120.0, "2048": 40.0} for name in LLAMACPP.values()})
    lines = report(_result(peers), smollm2_int4_package, 4096, 2048, 128).splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 2 + len(TYPES) + len(peers) and "bytes d0 / d2048" in rows[0]
    assert {row.count("|") for row in rows} == {13}
    ratios = [line for line in lines if line.startswith("tg128@d2048: edgellama int8 cache / ")]
    assert [line.rsplit(" = ", 1)[1] for line in ratios] == ["2.00x"] + ["2.50x"] * (len(peers) - 1)
