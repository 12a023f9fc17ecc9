"""setup.py's source lists (read by tests/helpers/setup_sources.py, as scripts/test-aarch64 reads them):
every C file of native/ is compiled, the kernels and layers into both modules, the operators' glue into
the operator library only."""
from __future__ import annotations

from pathlib import Path

from helpers.setup_sources import SETUP, source_lists

NATIVE = SETUP.parent / "native"


def test_every_native_c_file_is_built_into_the_module_it_serves():
    lists = source_lists()
    native, ops = set(lists["NATIVE_SOURCES"]), set(lists["OPS_SOURCES"])
    files = {f"native/{p.name}" for p in NATIVE.glob("*.c") if p.name != "_native.c"}   # _native.c: Cython's
    assert files == native | ops, f"not built: {sorted(files - native - ops)}; missing: {sorted((native | ops) - files)}"
    shared = set(lists["KERNEL_SOURCES"]) | set(lists["LAYER_SOURCES"])
    assert shared <= native and shared <= ops
    assert all(Path(p).name.startswith(("ort_", "phases")) for p in ops - native)
    assert len(lists["OPS_SOURCES"]) == len(ops) and len(lists["NATIVE_SOURCES"]) == len(native)   # no file twice
