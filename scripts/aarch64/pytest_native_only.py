"""pytest plugin for the emulated run: keep the tests that exercise the compiled routines.

    python -m pytest -p pytest_native_only tests/test_native_twin.py tests/test_sampler.py ...

- Tests parametrized over the two backends run only their `native` half: the `twin` half is plain
  NumPy, already run by the host's test suite, and emulation makes it the bulk of the time.
- Tests that call both modules themselves and compare them (tests/test_native_twin.py) all run.
- Tests that start `sys.executable` in a subprocess are left out: without binfmt_misc an emulated
  program cannot exec another aarch64 program. scripts/test-aarch64 makes their checks in-process.
"""
from __future__ import annotations

NEEDS_SUBPROCESS = {
    "test_pure_python_switch_selects_the_twin",
    "test_compiled_module_is_the_default_when_built",
}


def _left_out(item) -> bool:
    if item.originalname in NEEDS_SUBPROCESS:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "twin" in callspec.id.split("-")


def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items if _left_out(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not _left_out(item)]
