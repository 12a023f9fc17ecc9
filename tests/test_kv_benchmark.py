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


def test_the_report_gives_each_types_read_rate_at_both_depths(smollm2_int4_package):
    """The bytes a step reads times tokens/s: what to set beside benchmarks/read_bandwidth.py."""
    from benchmarks.kv_cache import GENAI, step_bytes, report
    from benchmarks.suite.onnx_weights import bytes_read_per_token

    weights = bytes_read_per_token(Path(smollm2_int4_package) / "model.onnx")
    assert step_bytes(smollm2_int4_package, "int8", 2048, 128) == weights + CACHE_BYTES_PER_TOKEN["int8"] * 2112
    lines = report(_result({GENAI: {"0": 150.0, "2048": 50.0}}), smollm2_int4_package, 4096, 2048, 128).splitlines()
    rate = next(line for line in lines if line.startswith("edgellama int8 cache at depths 0 and 2048: "))
    d0, d2048 = (weights + 12960 * 64) / 1e9 * 200.0, (weights + 12960 * 2112) / 1e9 * 100.0
    assert rate.endswith(f"MB a token: {d0:.1f} and {d2048:.1f} GB/s")


def test_the_read_bandwidth_benchmark_reads_a_buffer_at_a_positive_rate():
    from benchmarks.read_bandwidth import read_rate

    assert 0.1 < read_rate(1 << 20, 2, 1) < 10_000
