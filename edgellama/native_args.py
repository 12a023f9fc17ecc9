"""The arguments of every native routine, checked once, before either backend runs.

The compiled module (native/_native.pyx) and its NumPy twins (edgellama/twins/) call the check of a
routine first, so both refuse the same arguments with the same exception (edgellama.native_status)
and the C routines are only reached with sizes and positions that fit their buffers; C keeps only
cheap checks that return a status. Checked here: shapes, and positions and counts against them.
Element types and memory layout are the compiled module's buffer types (the twins compute in any
float type). The classes that callers use check their own terms before they get here:
edgellama.sampling the settings and the history, edgellama.kvcache positions against the cache
length and its buffers.
"""
from __future__ import annotations

import numpy as np

from .kv_types import KV_TILE
from .native_status import Status, error_for

_INT32_MAX = 2 ** 31 - 1


def _fits(start: int, n: int, capacity: int) -> bool:
    """[start, start + n) lies inside [0, capacity)."""
    return 0 <= start and 0 <= n and start + n <= capacity


def _shape(status: Status, context: str, name: str, array, ndim: int) -> tuple:
    shape = np.shape(array)
    if len(shape) != ndim:
        raise error_for(status, context, f"{name} has shape {shape}; expected {ndim} dimensions")
    return shape


# ---- sampler.h ----

def sampler(vocab_size, params) -> int:
    """Sampler(vocab_size, params, seed): the vocabulary size, a positive 32-bit integer, after
    checking that every token of the logit bias lies inside it."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
            or not 0 < vocab_size <= _INT32_MAX:
        raise error_for(Status.ERR_SIZE, "Sampler", f"vocab_size={vocab_size!r} must be a positive 32-bit integer")
    for token, _ in params.logit_bias:
        if not 0 <= token < vocab_size:
            raise error_for(Status.ERR_TOKEN, "Sampler", f"SamplingParams.logit_bias names token {token}, "
                                                         f"outside the vocabulary [0, {vocab_size})")
    return int(vocab_size)


def sample(vocab_size: int, logits, window, mask=None) -> None:
    """Sampler.sample(logits, window, mask): one row of logits, a 1-D window (its ids are checked by
    the routine, as it counts them), and None or a token mask that covers the vocabulary."""
    if np.shape(logits) != (vocab_size,):
        raise error_for(Status.ERR_SIZE, "Sampler.sample", f"logits have shape {np.shape(logits)}; expected "
                                                           f"({vocab_size},), one row of the vocabulary")
    _shape(Status.ERR_SIZE, "Sampler.sample", "window", window, 1)
    if mask is not None:
        _mask("Sampler.sample", vocab_size, mask)


def token_mask(logits, mask) -> None:
    """token_mask_apply(logits, mask): a non-empty row of logits and a mask of its words."""
    shape = _shape(Status.ERR_SIZE, "token_mask_apply", "logits", logits, 1)
    if shape[0] == 0:
        raise error_for(Status.ERR_SIZE, "token_mask_apply", "logits are empty")
    _mask("token_mask_apply", shape[0], mask)


def _mask(context: str, vocab_size: int, mask) -> None:
    """A token mask: (vocab_size + 31) // 32 words of 32 bits, one bit per token."""
    words = (vocab_size + 31) // 32
    if np.shape(mask) != (words,) or np.asarray(mask).dtype.itemsize != 4:
        raise error_for(Status.ERR_SIZE, context, f"the token mask has shape {np.shape(mask)} and type "
                                                  f"{np.asarray(mask).dtype}; expected ({words},) 32-bit words")


# ---- kvcache.h: buffers [batch, heads, capacity, head_dim] ----

def _kv(context: str, name: str, buf) -> tuple:
    shape = _shape(Status.ERR_RANGE, context, name, buf, 4)
    if shape[3] <= 0:
        raise error_for(Status.ERR_RANGE, context, f"{name} has shape {shape}; head_dim must be positive")
    return shape


def _angles(context: str, shape: tuple, cos_a, sin_a) -> None:
    if shape[3] % 2 or np.shape(cos_a) != (shape[3] // 2,) or np.shape(sin_a) != (shape[3] // 2,):
        raise error_for(Status.ERR_RANGE, context, f"cos_a and sin_a have shapes {np.shape(cos_a)} and "
                                                   f"{np.shape(sin_a)}; expected half of an even head_dim "
                                                   f"{shape[3]}")


def _span(context: str, what: str, start: int, n: int, capacity: int) -> None:
    if not _fits(start, n, capacity):
        raise error_for(Status.ERR_RANGE, context, f"{what} [{start}, {start} + {n}) is outside the "
                                                   f"{capacity} positions of the buffer")


def kv_copy(src, dst, n: int) -> None:
    """Positions [0, n) of every head, from src to dst: the same heads and head_dim."""
    s, d = _kv("kv_copy", "src", src), _kv("kv_copy", "dst", dst)
    if s[0] * s[1] != d[0] * d[1] or s[3] != d[3]:
        raise error_for(Status.ERR_RANGE, "kv_copy", f"src {s} and dst {d} differ in heads or head_dim")
    _span("kv_copy", "src", 0, n, s[2])
    _span("kv_copy", "dst", 0, n, d[2])


def kv_move(buf, dst: int, src: int, n: int) -> None:
    capacity = _kv("kv_move", "buf", buf)[2]
    _span("kv_move", "src", src, n, capacity)
    _span("kv_move", "dst", dst, n, capacity)


def kv_rotate(keys, start: int, n: int, cos_a, sin_a) -> None:
    shape = _kv("kv_rotate", "keys", keys)
    _angles("kv_rotate", shape, cos_a, sin_a)
    _span("kv_rotate", "rows", start, n, shape[2])


def kv_shift(keys, values, n_keep: int, n_discard: int, length: int, cos_a, sin_a) -> None:
    shape = _kv("kv_shift", "keys", keys)
    if np.shape(values) != shape:
        raise error_for(Status.ERR_RANGE, "kv_shift", f"keys {shape} and values {np.shape(values)} differ")
    _angles("kv_shift", shape, cos_a, sin_a)
    _span("kv_shift", "the cache", 0, length, shape[2])
    if not (_fits(n_keep, n_discard, length)):
        raise error_for(Status.ERR_RANGE, "kv_shift", f"n_keep={n_keep} and n_discard={n_discard} do not fit "
                                                      f"in length {length}")


# ---- halfconv.h, activation.h: 1-D buffers of one length ----

def _same_vectors(context: str, a, b) -> None:
    if np.ndim(a) != 1 or np.shape(a) != np.shape(b):
        raise error_for(Status.ERR_SIZE, context, f"shapes {np.shape(a)} and {np.shape(b)}; expected two "
                                                  "1-D buffers of one length")


def f16_to_f32(src, dst) -> None:
    _same_vectors("f16_to_f32", src, dst)


def f32_to_f16(src, dst) -> None:
    _same_vectors("f32_to_f16", src, dst)


def rms_norm(x, residual, gamma) -> None:
    """rms_norm(x, residual, gamma, eps): x [M, K] with K > 0, residual None or shaped as x, gamma [K]."""
    rows, k = _shape(Status.ERR_SIZE, "rms_norm", "x", x, 2)
    if k <= 0 or np.shape(gamma) != (k,) or (residual is not None and np.shape(residual) != (rows, k)):
        raise error_for(Status.ERR_SIZE, "rms_norm", f"x {np.shape(x)}, residual {np.shape(residual)} and gamma "
                                                     f"{np.shape(gamma)} do not match")


def swiglu(gate, up) -> None:
    _same_vectors("swiglu", gate, up)


# ---- blocks.h: x [M, 32 nb] against a weight of N rows of nb blocks ----

def _block_product(context: str, x, weight, block: int, tables: dict) -> None:
    rows, width = _shape(Status.ERR_SIZE, context, "x", x, 2)
    n, nb, size = _shape(Status.ERR_SIZE, context, "the weight", weight, 3)
    wrong = [name for name, table in tables.items() if np.shape(table) != (n, nb)]
    if size != block or wrong or width != 32 * nb:
        raise error_for(Status.ERR_SIZE, context, f"x {(rows, width)} and a weight {(n, nb, size)} (with "
                                                  f"{', '.join(wrong) or 'tables'} [{n}, {nb}]) do not match: "
                                                  f"expected [N, nb, {block}] and x [M, 32 nb]")


# kernels.h: the paths by name
KERNEL_PATHS = ("portable", "avx2", "avx512vnni", "neon", "i8mm", "avxvnni")


def kernel_path(path, supported: tuple) -> None:
    """`path`: None (the chosen one) or the name of a path in `supported` (those this CPU runs)."""
    if path is not None and path not in supported:
        known = "this CPU runs " + ", ".join(supported) if path in KERNEL_PATHS else f"paths are {KERNEL_PATHS}"
        raise error_for(Status.ERR_RANGE, "kernel path", f"{path!r} cannot be used: {known}")


def q41_matmul(x, qs, d, m) -> None:
    _block_product("q41_matmul", x, qs, 16, {"d": d, "m": m})


def q8_matmul(x, q, scale) -> None:
    _block_product("q8_matmul", x, q, 32, {"scale": scale})


def _kquant_product(context: str, x, raw, size: int) -> None:
    """x [M, K] against GGUF k-quant super-blocks raw uint8 [N, K / 256, size]."""
    rows, width = _shape(Status.ERR_SIZE, context, "x", x, 2)
    n, ns, got = _shape(Status.ERR_SIZE, context, "the weight", raw, 3)
    if got != size or width != 256 * ns or np.asarray(raw).dtype != np.uint8:
        raise error_for(Status.ERR_SIZE, context, f"x {(rows, width)} and a weight {(n, ns, got)} do not match: "
                                                  f"expected uint8 [N, K / 256, {size}] and x [M, K]")


def q4k_matmul(x, raw) -> None:
    _kquant_product("q4k_matmul", x, raw, 144)


def q6k_matmul(x, raw) -> None:
    _kquant_product("q6k_matmul", x, raw, 210)


def kquant_gather(context: str, raw, ids, size: int) -> None:
    """Rows ids (1-D, each in [0, N)) of GGUF k-quant super-blocks raw uint8 [N, K / 256, size]."""
    n, _, got = _shape(Status.ERR_SIZE, context, "the weight", raw, 3)
    if got != size or np.asarray(raw).dtype != np.uint8:
        raise error_for(Status.ERR_SIZE, context, f"a weight {np.shape(raw)} of {np.asarray(raw).dtype}: expected "
                                                  f"uint8 [N, K / 256, {size}]")
    _ids_in(context, ids, n)


def _ids_in(context: str, ids, n: int) -> None:
    _shape(Status.ERR_SIZE, context, "ids", ids, 1)
    ids = np.asarray(ids)
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= n):
        raise error_for(Status.ERR_RANGE, context, f"ids must be integers in [0, {n})")


def q41_gather(qs, d, m, ids) -> None:
    """Rows ids (1-D, each in [0, N)) of a Q4_1 weight qs [N, nb, 16] with d and m [N, nb]."""
    n, nb, size = _shape(Status.ERR_SIZE, "q41_gather", "the weight", qs, 3)
    if size != 16 or np.shape(d) != (n, nb) or np.shape(m) != (n, nb):
        raise error_for(Status.ERR_SIZE, "q41_gather", f"a weight {(n, nb, size)} with d {np.shape(d)} and m "
                                                       f"{np.shape(m)} do not match: expected [N, nb, 16] and [N, nb]")
    _ids_in("q41_gather", ids, n)


def q8_gather(q, scale, ids) -> None:
    """Rows ids (1-D, each in [0, N)) of an 8-bit weight q [N, nb, 32] with scale [N, nb]."""
    n, nb, size = _shape(Status.ERR_SIZE, "q8_gather", "the weight", q, 3)
    if size != 32 or np.shape(scale) != (n, nb):
        raise error_for(Status.ERR_SIZE, "q8_gather", f"a weight {(n, nb, size)} with scale {np.shape(scale)} do not "
                                                      "match: expected [N, nb, 32] and [N, nb]")
    _ids_in("q8_gather", ids, n)


def q5k_matmul(x, raw) -> None:
    _kquant_product("q5k_matmul", x, raw, 176)


def q5k_gather(raw, ids) -> None:
    kquant_gather("q5k_gather", raw, ids, 176)


# ---- attention.h ----

MAX_HEAD_DIM = 256   # attention.h: EL_ATT_MAX_HEAD_DIM


def q8_row_bytes(d: int, group: int) -> int:
    """Bytes of one q8 cache row of d values in groups of `group` (kvrows.h)."""
    if d <= 0 or group <= 0 or d % group:
        raise error_for(Status.ERR_SIZE, "q8 rows", f"head_dim {d} is not a positive multiple of kv_group {group}")
    return d + 4 * (d // group)


def cache_row(context: str, dtype, d: int, group: int) -> int:
    """Elements of one cache row of head_dim d held in a buffer of `dtype`: float32 and float16
    rows hold d values, uint8 ones a q8 row (kvrows.h)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return q8_row_bytes(d, group)
    if dtype in (np.float32, np.float16):
        return d
    raise error_for(Status.ERR_SIZE, context, f"cache buffers of {dtype} are not supported; use float32, float16 "
                                              "or uint8 (q8 rows)")


def q8_rows(context: str, x, raw, d: int, group: int) -> None:
    """quantize_rows / dequantize_rows: x [..., d] and raw [..., q8 row] of the same rows."""
    bytes_ = q8_row_bytes(d, group)
    if np.shape(x)[:-1] != np.shape(raw)[:-1] or np.shape(x)[-1:] != (d,) or np.shape(raw)[-1:] != (bytes_,):
        raise error_for(Status.ERR_SIZE, context, f"values {np.shape(x)} and q8 rows {np.shape(raw)} do not hold "
                                                  f"the same rows of {d} values ({bytes_} bytes)")


def _q8_tiles(what: str, tiles, d: int, group: int, n) -> int:
    """q8 tiles [C, row] of d values (d a multiple of 4, at most 256; C a multiple of the tile's 64 rows)
    and the n <= C of their rows a routine reads (None: all); returns n."""
    bytes_ = q8_row_bytes(d, group)
    if np.ndim(tiles) != 2 or np.shape(tiles)[1] != bytes_ or d > MAX_HEAD_DIM or d % 4 or np.shape(tiles)[0] % KV_TILE:
        raise error_for(Status.ERR_SIZE, what, f"q8 tiles {np.shape(tiles)} are not of head_dim {d} ({bytes_} bytes a "
                                               f"row, d a multiple of 4 and at most {MAX_HEAD_DIM}, whole tiles of "
                                               f"{KV_TILE} rows)")
    if n is None:
        return int(np.shape(tiles)[0])
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 0 <= n <= np.shape(tiles)[0]):
        raise error_for(Status.ERR_SIZE, what, f"n={n!r} rows of {np.shape(tiles)[0]} held")
    return int(n)


def q8_scores(q, rows, d: int, group: int, n=None) -> None:
    """q8_scores: a query q [d] and q8 key tiles (_q8_tiles) of which n rows are scored."""
    _q8_tiles("q8_scores", rows, d, group, n)
    if np.shape(q) != (d,):
        raise error_for(Status.ERR_SIZE, "q8_scores", f"query {np.shape(q)} is not of head_dim {d}")


def q8_weigh(w, tiles, d: int, group: int, n=None) -> None:
    """q8_weigh: q8 value tiles (_q8_tiles) and the weights w of the n rows weighed."""
    count = _q8_tiles("q8_weigh", tiles, d, group, n)
    if np.ndim(w) != 1 or np.shape(w)[0] < count:
        raise error_for(Status.ERR_SIZE, "q8_weigh", f"weights {np.shape(w)} for {count} rows")


def attention(qkv, keys, values, cos, sin, p0: int, heads: int, kv_group: int = 32) -> None:
    """qkv [S, (H + 2G) D] at positions p0 .., the cache keys and values [G, C, row] (row: D for
    float32 and float16 buffers, a q8 row for uint8 ones), the rotary tables cos and sin [R, D/2]:
    H a positive multiple of G, D even and at most 256, p0 + S <= C and <= R."""
    kv_heads, capacity, row = _shape(Status.ERR_SIZE, "attention", "keys", keys, 3)
    s, width = _shape(Status.ERR_SIZE, "attention", "qkv", qkv, 2)
    positions, half = _shape(Status.ERR_SIZE, "attention", "cos", cos, 2)
    d = width // (heads + 2 * kv_heads) if heads > 0 and kv_heads > 0 else 0
    if (kv_heads <= 0 or heads <= 0 or heads % kv_heads or d <= 0 or d % 2 or d > MAX_HEAD_DIM
            or np.shape(values) != (kv_heads, capacity, row) or width != (heads + 2 * kv_heads) * d
            or half * 2 != d or np.shape(sin) != (positions, half) or np.result_type(values) != np.result_type(keys)
            or row != cache_row("attention", np.result_type(keys), d, kv_group)):
        raise error_for(Status.ERR_SIZE, "attention", f"qkv {(s, width)}, keys {(kv_heads, capacity, row)}, values "
                                                      f"{np.shape(values)}, cos {(positions, half)}, sin "
                                                      f"{np.shape(sin)} and heads={heads} do not match")
    if np.result_type(keys) == np.uint8 and (capacity % KV_TILE or d % 4):
        raise error_for(Status.ERR_SIZE, "attention", f"q8 caches of {capacity} rows of head_dim {d}: they lie in "
                                                      f"tiles of {KV_TILE} rows (a capacity that is a multiple of "
                                                      f"{KV_TILE}, head_dim a multiple of 4)")
    if not (_fits(p0, s, capacity) and _fits(p0, s, positions)):
        raise error_for(Status.ERR_SIZE, "attention", f"tokens at positions [{p0}, {p0} + {s}) do not fit the "
                                                      f"cache ({capacity}) or the rotary tables ({positions})")
