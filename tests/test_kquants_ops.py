"""The k-quant operators of ai.edgellama (native/ort_kquants.c: MatMulQ4_K, MatMulQ6_K, GatherQ4_K,
GatherQ6_K) compute inside a graph, from the tiles the converter writes, what the NumPy twin computes
from the file's super-blocks: the products bit for bit on any number of threads, the gathered rows as
gguf dequantizes them; inputs that are not the tiles of K and N are refused."""
from __future__ import annotations

import numpy as np
import pytest

from edgellama import ops, twins

pytest.importorskip("gguf")
from edgellama.converters.kquants import KQuantBlocks  # noqa: E402
from helpers.kquants import KINDS, TYPE_KINDS, file_weight, random_raw  # noqa: E402

needs_ops = pytest.mark.skipif(ops.library_path() is None, reason="edgellama._ops is not built")
TYPES = list(TYPE_KINDS)


def _session(path, op: str, fields: list, inputs: list, k: int, n: int, threads: int = 2):
    """A graph of one ai.edgellama operator: `inputs` (name, element type, shape) around the fields as
    initializers (fields before ids for a gather, after x for a product)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgellama.session import session_options

    inits = [onnx.numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(fields)]
    names = [i.name for i in inits]
    ordered = names + [inputs[0][0]] if op.startswith("Gather") else [inputs[0][0]] + names
    node = helper.make_node(op, ordered, ["y"], domain="ai.edgellama", K=k, N=n)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.edgellama", 1)])
    onnx.save(model, str(path))
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def _fields(ggml_type: str, raw: np.ndarray) -> list:
    return [a for _, a in KQuantBlocks(ggml_type, raw).initializers()]


def _product(tmp_path, ggml_type: str, raw: np.ndarray, threads: int = 2):
    from onnx import TensorProto

    n, ns = raw.shape[:2]
    return _session(tmp_path / f"{ggml_type}-{threads}.onnx", f"MatMul{ggml_type}", _fields(ggml_type, raw),
                    [("x", TensorProto.FLOAT, [1, None, None])], 256 * ns, n, threads)


@needs_ops
@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize("tokens,n,ns", [(1, 13, 2), (5, 40, 1), (3, 9, 3), (1, 96, 2)])
def test_a_product_is_the_twins_bits_on_any_number_of_threads(tmp_path, ggml_type, tokens, n, ns):
    """Decode and prompt calls, a partial last tile (13, 9), one and several super-blocks; the weight
    rows claimed by 1, 2, 3 or 8 threads."""
    rng = np.random.default_rng(n + ns)
    raw = random_raw(rng, TYPE_KINDS[ggml_type], n, ns)
    x = rng.standard_normal((1, tokens, 256 * ns)).astype(np.float32)
    twin = getattr(twins, TYPE_KINDS[ggml_type] + "_matmul")(x[0], raw)
    for threads in (1, 2, 3, 8):
        y = _product(tmp_path, ggml_type, raw, threads).run(["y"], {"x": x})[0]
        assert y.shape == (1, tokens, n)
        np.testing.assert_array_equal(y[0], twin, err_msg=f"{threads} threads")


@needs_ops
@pytest.mark.parametrize("ggml_type", TYPES)
def test_a_gather_gives_the_rows_gguf_dequantizes(tmp_path, ggml_type):
    """Rows of the tiles (ids of any shape, repeated, the last row of a partial tile) equal the twin's and
    gguf.quants' values bit for bit."""
    from onnx import TensorProto

    kind = TYPE_KINDS[ggml_type]
    raw = random_raw(np.random.default_rng(3), kind, 13, 2)
    session = _session(tmp_path / "g.onnx", f"Gather{ggml_type}", _fields(ggml_type, raw),
                       [("ids", TensorProto.INT64, [None, None])], 512, 13)
    ids = np.array([[12, 0, 5], [5, 7, 8]], np.int64)
    rows = session.run(["y"], {"ids": ids})[0]
    assert rows.shape == (2, 3, 512)
    np.testing.assert_array_equal(rows.reshape(6, -1), getattr(twins, kind + "_gather")(raw, ids.reshape(-1)))
    np.testing.assert_array_equal(rows.reshape(6, -1), file_weight(raw, kind)[ids.reshape(-1)])


@needs_ops
@pytest.mark.parametrize("ggml_type", TYPES)
def test_the_operators_refuse_what_is_not_the_tiles_of_k_and_n(tmp_path, ggml_type):
    """(and a gather refuses an id outside [0, N))"""
    from onnx import TensorProto

    raw = random_raw(np.random.default_rng(4), TYPE_KINDS[ggml_type], 8, 2)
    gather = _session(tmp_path / "g.onnx", f"Gather{ggml_type}", _fields(ggml_type, raw),
                      [("ids", TensorProto.INT64, [None])], 512, 8)
    with pytest.raises(Exception, match=r"outside the table's rows \[0, N\)"):
        gather.run(["y"], {"ids": np.array([8], np.int64)})
    session = _product(tmp_path, ggml_type, raw)
    assert session.run(["y"], {"x": np.ones((1, 1, 512), np.float32)})[0].shape == (1, 1, 8)
    assert session.run(["y"], {"x": np.ones((1, 0, 512), np.float32)})[0].shape == (1, 0, 8)   # no rows
    with pytest.raises(Exception, match="last dimension of x differs from attribute K"):
        session.run(["y"], {"x": np.ones((1, 1, 256), np.float32)})
    rows = _session(tmp_path / "rows.onnx", f"MatMul{ggml_type}", _fields(ggml_type, raw),
                    [("x", TensorProto.FLOAT, [1, None, 512])], 512, 16)           # N says two tiles
    with pytest.raises(Exception, match=f"must be {ggml_type} tiles"):
        rows.run(["y"], {"x": np.ones((1, 1, 512), np.float32)})
    with pytest.raises(Exception, match="multiple of 256"):
        _session(tmp_path / "k.onnx", f"MatMul{ggml_type}", _fields(ggml_type, raw[:, :1]),
                 [("x", TensorProto.FLOAT, [1, None, 224])], 224, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_the_gather_twin_refuses_ids_outside_the_table(kind):
    from edgellama.errors import InvalidParameterError

    raw = random_raw(np.random.default_rng(5), kind, 4, 1)
    with pytest.raises(InvalidParameterError, match=r"ids must be integers in \[0, 4\)"):
        getattr(twins, kind + "_gather")(raw, [4])
