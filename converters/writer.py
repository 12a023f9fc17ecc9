"""Write a model package atomically: everything goes into a temporary folder beside the
destination (".NAME.tmp-PID-XXXX"), and only a complete package is renamed into place.

On any exception, KeyboardInterrupt included (the command line turns SIGTERM into one), the
temporary folder (and any parent folder this writer created) is removed, so the destination
is either untouched or complete. A process killed outright (SIGKILL, power loss) cannot clean
up: the next writer to the same destination removes such leftovers, recognised by their name
(".NAME.tmp-PID-*" / ".NAME.old-PID-*"), their content (package files only) and either a
process id that no longer runs on this machine or no change for STALE_AFTER_S seconds.

What an existing destination may be (checked when the writer is made and again before the
rename): with force, an empty folder or an edgellama package (a folder holding edgellama.json and
nothing but a package's files);
never the current directory, the source, or a folder that contains either of them.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edgellama.errors import InvalidParameterError, OutputError
from edgellama.package import (DATA_FILE, GENAI_CONFIG_FILE, MANIFEST, MODEL_FILE, TOKENIZER_CONFIG_FILE,
                               TOKENIZER_FILE, PackageInfo, checksums)

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0
# every file a package (or a temporary folder on its way to one) may hold
PACKAGE_FILES = frozenset({MODEL_FILE, DATA_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, GENAI_CONFIG_FILE,
                           MANIFEST, "special_tokens_map.json", "generation_config.json"})
# errors of the file system that writing causes (access errors count when they name a path of the output)
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM}


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies below it (both absolute, links resolved)."""
    return path == folder or folder in path.parents


def check_destination(dest: Path, force: bool, protected=()) -> None:
    """Refuse a destination that must not be written or replaced (see the module docstring).

    protected: paths (the source) that the destination may neither be nor contain."""
    real = dest.resolve()
    for what, path in [("the current directory", Path.cwd())] + [("the source", Path(p)) for p in protected]:
        if _inside(path.resolve(), real):
            raise InvalidParameterError(f"output {dest} is {what} or a folder that contains it; "
                                        "choose a new folder for the package")
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir():
        raise InvalidParameterError(f"output {dest} exists and is not a folder; remove it or choose another path")
    if not force:
        raise InvalidParameterError(f"output {dest} already exists; pass force=True to replace it")
    if not any(dest.iterdir()):
        return
    if not (dest / MANIFEST).is_file():
        raise InvalidParameterError(f"output {dest} is a folder that is not an edgellama package (no {MANIFEST}); "
                                    "force=True replaces only a package or an empty folder: choose another path")
    others = sorted(p.name for p in dest.iterdir() if not _package_file(p))
    if others:      # the user's files beside a package (notes, a folder): replacing it would delete them
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise InvalidParameterError(f"output {dest} holds {others[0]!r}{more} besides a package's own files (a link, "
                                    "a folder or a file no conversion writes); force=True replaces only a package or "
                                    "an empty folder: move them out or choose another path")


def _temp_name(dest: Path, kind: str) -> str:
    return f".{dest.name}.{kind}-{os.getpid()}-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True         # it exists (or cannot be told): keep its folder
    return True


def _package_file(path: Path) -> bool:
    return path.name in PACKAGE_FILES and path.is_file() and not path.is_symlink()


def _only_package_files(folder: Path) -> bool:
    return all(_package_file(p) for p in folder.iterdir())


def _newest_change(folder: Path) -> float:
    return max([folder.lstat().st_mtime] + [p.lstat().st_mtime for p in folder.rglob("*")])


def remove_stale_temporaries(dest: Path) -> list:
    """Remove what writers to `dest` that were killed left beside it; returns the removed paths."""
    pattern = re.compile(re.escape(f".{dest.name}.") + r"(tmp|old)-(\d+)-[A-Za-z0-9_]+")
    removed = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        kind, pid = match.group(1), int(match.group(2))
        try:
            if kind == "tmp":
                ours = _only_package_files(path)
            else:   # the previous package, moved aside while its replacement was renamed into place
                inner = path / "package"
                ours = ([p.name for p in path.iterdir()] == ["package"] and not inner.is_symlink()
                        and inner.is_dir() and _only_package_files(inner) and (dest / MANIFEST).is_file())
            stale = pid != os.getpid() and (not _running(pid) or time.time() - _newest_change(path) > STALE_AFTER_S)
        except OSError:
            continue
        if ours and stale:
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s, left by a conversion that did not finish", path)
            removed.append(path)
    return removed


def output_error(exc: OSError, where: Path) -> OutputError:
    """Our error for a file-system failure while writing the package at `where`."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only"}.get(exc.errno, exc.strerror or str(exc))
    advice = ("free space or choose another output folder" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
              else "choose another output folder")   # a path through a file, a missing or read-only place
    return OutputError(f"cannot write the package {where}: {reason}; {advice}")


class PackageWriter:
    """with PackageWriter(dest, force) as w: write files under w.path, then w.commit(info).

    protected: paths the destination may neither be nor contain (the source); more may be added
    with `protect` before `commit`."""

    def __init__(self, destination, force: bool = False, protected=()):
        if str(destination) == "":
            raise InvalidParameterError("output path is empty; name the package folder to write")
        self.destination = Path(destination).expanduser().absolute()
        self.force = force
        self.protected = [Path(p).expanduser().absolute() for p in protected]
        self.path: Path | None = None
        self._created_parents: list[Path] = []
        check_destination(self.destination, force, self.protected)

    def protect(self, path) -> None:
        self.protected.append(Path(path).expanduser().absolute())
        check_destination(self.destination, self.force, self.protected)

    def __enter__(self) -> "PackageWriter":
        parent = self.destination.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self._created_parents.append(folder)
            remove_stale_temporaries(self.destination)
            self.path = Path(tempfile.mkdtemp(prefix=_temp_name(self.destination, "tmp"), dir=self.destination.parent))
        except OSError as exc:
            self._discard()
            raise output_error(exc, self.destination) from None
        return self

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.path / name
        path.write_bytes(data)
        return path

    def commit(self, info: PackageInfo) -> PackageInfo:
        """Hash every file, write the manifest and move the package into place."""
        names = [p.name for p in self.path.iterdir() if p.is_file() and p.name != MANIFEST]
        info = replace(info, files=checksums(self.path, names))
        self.write_bytes(MANIFEST, info.to_json().encode("utf-8"))
        check_destination(self.destination, self.force, self.protected)
        old = None
        if self.destination.exists():      # force: keep the old package until the new one is in place
            old = Path(tempfile.mkdtemp(prefix=_temp_name(self.destination, "old"), dir=self.destination.parent))
            os.replace(self.destination, old / "package")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)   # mkdtemp made it private
        try:
            os.replace(self.path, self.destination)
        except OSError:
            if old is not None:             # put the old package back
                os.replace(old / "package", self.destination)
                old.rmdir()
            raise
        self.path = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("wrote package %s", self.destination)
        return info

    def _discard(self) -> None:
        if self.path is not None and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        self.path = None
        for folder in reversed(self._created_parents):
            try:
                folder.rmdir()
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None or self.path is not None:
            self._discard()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError) and self._caused_by_output(exc):
            raise output_error(exc, self.destination) from None
        return False

    def _caused_by_output(self, exc: OSError) -> bool:
        if exc.errno in _OUTPUT_ERRNOS:
            return True
        named = [Path(f).absolute() for f in (exc.filename, exc.filename2) if f]
        dest = self.destination
        ours = [p for p in named if p == dest.parent or _inside(p, dest)
                or any(q.parent == dest.parent and q.name.startswith(f".{dest.name}.") for q in [p, *p.parents])]
        return exc.errno in _ACCESS_ERRNOS and bool(ours)
