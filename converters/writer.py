"""Write a model package atomically: everything goes into a temporary folder beside the
destination (".NAME.tmp-XXXX"), and only a complete package is renamed into place.

On any exception, KeyboardInterrupt included, the temporary folder (and any parent folder
this writer created) is removed, so the destination is either untouched or complete.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from edgellama.errors import InvalidParameterError
from edgellama.package import MANIFEST, PackageInfo, checksums

log = logging.getLogger(__name__)


class PackageWriter:
    """with PackageWriter(dest, force) as w: write files under w.path, then w.commit(info)."""

    def __init__(self, destination, force: bool = False):
        self.destination = Path(destination).expanduser().absolute()
        self.force = force
        self.path: Path | None = None
        self._created_parents: list[Path] = []
        self._check_destination()

    def _check_destination(self) -> None:
        dest = self.destination
        if dest.exists() and not self.force:
            raise InvalidParameterError(f"output {dest} already exists; pass --force (force=True) to replace it")
        if dest.exists() and not dest.is_dir():
            raise InvalidParameterError(f"output {dest} exists and is not a folder; remove it or choose another path")

    def __enter__(self) -> "PackageWriter":
        parent = self.destination.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created_parents.append(folder)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.tmp-", dir=self.destination.parent))
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
        self._check_destination()
        old = None
        if self.destination.exists():      # force: keep the old package until the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.old-", dir=self.destination.parent))
            os.replace(self.destination, old / "package")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)   # mkdtemp made it private
        os.replace(self.path, self.destination)
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
        return False
