"""A package's weights read into the process's memory, in huge pages, for ONNX Runtime to compute from.

Left to itself, ONNX Runtime maps model.onnx.data and reads each weight through the file's page cache, in
4 KiB pages. A decode step streams every weight once; from anonymous memory that the kernel backs with 2 MiB
pages (transparent huge pages: the mapping is advised so before it is touched) the same kernels decode the
Llama-3.2-1B shape 7-12% faster (README, "Weights in memory"). So on the CPU the weights that only
edgellama's operators read are read into one such mapping at load, and each handed to ONNX Runtime as a
tensor over its bytes there (SessionOptions.add_initializer: read in place, never copied). Weights that ONNX
Runtime's own operators read stay in the file: those operators repack them (MatMul's packed float32 panels,
MatMulNBits' blocks), and a copy in memory would only be kept beside the repacked one.

    read_weights(tensors, folder) -> Weights | None the tensors (external_data.ExternalTensor) from their
                                                    files in `folder`
    Weights.add_to(options)                         each one as an initializer of the session to be made;
                                                    the Weights must live as long as that session

The buffer: one anonymous mapping of the tensors' bytes plus 2 MiB; the tensors lie one after another from its
first 2 MiB boundary, each at a multiple of 64 bytes, read file by file in pieces of 16 MiB by up to four
threads (each faults in the pages it writes, which is most of a read's time). `edgellama.load(..., mmap=True)` keeps ONNX Runtime's mapping of the file instead:
clean pages that the system may drop under memory pressure and read again (a phone short of memory), where
anonymous pages have to stay, or go to swap.
"""
from __future__ import annotations

import logging
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import PackageError

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20   # bytes of an x86-64 or aarch64 transparent huge page (4 KiB base pages)
ALIGN = 64            # bytes a tensor's start is a multiple of (a cache line; every element type's alignment)
PIECE = 16 << 20      # bytes read at a time by one thread
READERS = 4           # threads that read (and fault in) the mapping, at most: 0.21 s alone against 0.11 s on two
                      # for the 738 MiB of the Llama-3.2-1B shape on the Intel Xeon VM


@dataclass(frozen=True)
class _Stored:
    """One external initializer: where its bytes are in `path` and what they hold."""
    name: str
    path: Path
    offset: int
    length: int
    dims: tuple
    dtype: object       # numpy.dtype


@dataclass
class Weights:
    """Tensors over one anonymous mapping (see the module docstring)."""
    buffer: mmap.mmap
    arrays: dict                            # initializer name -> numpy array over `buffer`
    huge_pages: bool                        # whether the mapping was advised to take huge pages
    _values: list = field(default_factory=list, repr=False)   # the OrtValues handed out: alive with the session

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def describe(self) -> str:
        """e.g. "in memory, 94.8 MiB in 2 MiB pages (advised)": what `edgellama bench` reports."""
        pages = "in 2 MiB pages (advised)" if self.huge_pages else "in the system's base pages"
        return f"in memory, {self.nbytes / 2**20:.1f} MiB {pages}"

    def add_to(self, options) -> None:
        """Make each array an initializer of the session that `options` (onnxruntime.SessionOptions) will open."""
        import onnxruntime as ort

        for name, array in self.arrays.items():
            value = ort.OrtValue.ortvalue_from_numpy(array)
            self._values.append(value)
            options.add_initializer(name, value)


# TensorProto.DataType -> the NumPy type of its elements (types of other sizes are left to ONNX Runtime)
_NUMPY_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def _stored(tensors, folder: Path) -> list:
    """`tensors` (edgellama.external_data.ExternalTensor) as _Stored, in (file, offset) order; a tensor of an
    element type NumPy has no type for is left to ONNX Runtime (it reads that one from the file itself)."""
    import numpy as np

    found = []
    for tensor in tensors:
        if tensor.data_type not in _NUMPY_TYPES:
            continue
        dtype = np.dtype(_NUMPY_TYPES[tensor.data_type])
        count = int(np.prod(tensor.dims, dtype=np.int64))
        length = count * dtype.itemsize if tensor.length is None else tensor.length
        if length != count * dtype.itemsize:
            raise PackageError(f"{folder}: tensor {tensor.name!r} records {length} bytes of external data where its "
                               f"shape {list(tensor.dims)} holds {count * dtype.itemsize}; convert the model again")
        found.append(_Stored(tensor.name, folder / tensor.location, tensor.offset, length, tuple(tensor.dims), dtype))
    return sorted(found, key=lambda t: (str(t.path), t.offset))


def _anonymous(size: int) -> tuple:
    """An anonymous private mapping of `size` bytes plus HUGE_PAGE, advised to take huge pages where the system
    knows the advice; (mapping, whether it was advised)."""
    if hasattr(mmap, "MAP_PRIVATE"):   # POSIX: private (a shared one is shared memory, without huge pages here)
        buffer = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        buffer = mmap.mmap(-1, size + HUGE_PAGE)
    advised = False
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)
            advised = True
        except OSError as exc:   # a kernel without transparent huge pages
            log.debug("no huge pages for the weights: %s", exc)
    return buffer, advised


def _pieces(stored: list, places: list) -> list:
    """(tensor, its place in the arena, bytes from its start, bytes): pieces of at most PIECE bytes covering
    every tensor."""
    return [(tensor, place, start, min(PIECE, tensor.length - start)) for tensor, place in zip(stored, places)
            for start in range(0, tensor.length, PIECE)]


def _read(path: Path, pieces: list, arena, workers: int) -> None:
    """Each piece's bytes from the file at `path` into the arena: on `workers` threads where the system reads at
    an offset (os.preadv: the threads share one descriptor and fault in their own pages), else one piece after
    another through seek and readinto."""
    at_offset = hasattr(os, "preadv")
    with open(path, "rb", buffering=0) as fh:
        def read(piece):
            tensor, place, start, size = piece
            view = memoryview(arena[place + start:place + start + size])
            done = 0
            while done < size:
                offset = tensor.offset + start + done
                if at_offset:
                    got = os.preadv(fh.fileno(), [view[done:]], offset)
                else:
                    fh.seek(offset)
                    got = fh.readinto(view[done:])
                if not got:
                    raise PackageError(f"{path}: truncated: tensor {tensor.name!r} needs bytes {tensor.offset}.."
                                       f"{tensor.offset + tensor.length}; copy the package again")
                done += got

        if at_offset and workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(read, pieces):
                    pass
        else:
            for piece in pieces:
                read(piece)


def read_weights(tensors, folder: Path) -> Optional[Weights]:
    """The tensors (edgellama.external_data.ExternalTensor: initializers held in files) read from the files
    in `folder` (see the module docstring), or None when there are none."""
    import numpy as np

    t0 = time.perf_counter()
    stored = _stored(tensors, Path(folder))
    if not stored:
        return None
    places, end = [], 0
    for tensor in stored:
        end = -(-end // ALIGN) * ALIGN
        places.append(end)
        end += tensor.length
    buffer, advised = _anonymous(end)
    whole = np.frombuffer(buffer, np.uint8)
    start = -whole.ctypes.data % HUGE_PAGE
    arena = whole[start:start + end]
    pieces, workers = _pieces(stored, places), min(READERS, os.cpu_count() or 1)
    for path in dict.fromkeys(t.path for t in stored):   # file by file, in order
        _read(path, [piece for piece in pieces if piece[0].path == path], arena, workers)
    arrays = {t.name: arena[p:p + t.length].view(t.dtype).reshape(t.dims) for t, p in zip(stored, places)}
    weights = Weights(buffer, arrays, advised)
    log.info("%d weights (%.1f MiB) read into memory%s in %.2f s", len(arrays), end / 2**20,
             " advised to take huge pages" if advised else "", time.perf_counter() - t0)
    return weights
