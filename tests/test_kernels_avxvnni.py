"""The avxvnni kernel path (native/blocks_avxvnni.c, blocks_q5k_avxvnni.c, and attention.c's avxvnni build):
the avx512vnni path's block-product loops with the VEX form of vpdpbusd, and attention's 256-bit loops with the
VEX forms of vpdpbusd and vpdpwssd, for CPUs with AVX-VNNI and no AVX-512. Where the CPU has AVX-VNNI, every
path test runs it (kernels.available()); elsewhere the block products' loops are checked through their EVEX
twin on an AVX-512 VNNI CPU (attention's are not), and every part of its build is checked to hold no
instruction that needs AVX-512."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.setup_sources import source_lists

from edgellama import kernels

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"

SOURCES = [Path(s).name for s in source_lists()["KERNEL_SOURCES"]]   # the block products of every path
FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off", f"-I{NATIVE}"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@needs_gcc
@pytest.mark.skipif("avx512vnni" not in kernels.available(), reason="the EVEX twin needs a CPU with AVX-512 VNNI")
def test_the_avxvnni_loops_give_the_avx512vnni_paths_bits(tmp_path):
    """Q4_1, 8-bit, Q4_K, Q6_K and Q5_K products on 1, 3 and 9 activation rows over whole and partial
    ranges of weight rows, bit for bit (tests/helpers/avxvnni_check.c)."""
    program = tmp_path / "avxvnni_check"
    subprocess.run(["gcc", *FLAGS, "-DEL_AVXVNNI_AS_AVX512", str(ROOT / "tests/helpers/avxvnni_check.c"),
                    *(str(NATIVE / s) for s in SOURCES), "-lm", "-o", str(program)], check=True, timeout=300)
    done = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == "checked 60 products"


def _instructions(listing: str, functions: str) -> list:
    """The instruction lines of an objdump listing inside the functions whose names match `functions`."""
    lines, inside = [], False
    for line in listing.splitlines():
        name = re.match(r"[0-9a-f]+ <(.+)>:$", line)
        if name:
            inside = re.search(functions, name.group(1)) is not None
        elif inside and re.match(r"\s+[0-9a-f]+:\t", line):
            lines.append(line)
    return lines


@needs_gcc
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
@pytest.mark.parametrize("source, functions, vnni", [("blocks_avxvnni.c", ".", ["vpdpbusd"]),
                                                     ("blocks_q5k_avxvnni.c", ".", ["vpdpbusd"]),
                                                     ("attention.c", "_avxvnni", ["vpdpbusd", "vpdpwssd"])])
def test_the_avxvnni_build_needs_no_avx512(tmp_path, source, functions, vnni):
    """As the package builds it, the path's code (in attention.c, the functions of its avxvnni build)
    holds its VNNI instructions in their VEX form only, and nothing EVEX-encoded (no opcode after the
    0x62 prefix, no zmm, mask or upper-16 register)."""
    obj = tmp_path / "path.o"
    subprocess.run(["gcc", *FLAGS, "-O3", "-fPIC", "-c", str(NATIVE / source), "-o", str(obj)], check=True,
                   timeout=120)
    listing = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    lines = _instructions(listing, functions)
    for instruction in vnni:
        dots = [line for line in lines if instruction in line]
        assert dots and all("{vex}" in line for line in dots), instruction
    evex = [line for line in lines if re.match(r"\s+[0-9a-f]+:\t62 [^\t]*\t", line)   # an instruction's first bytes
            or re.search(r"%zmm|%k[0-7]|%[xy]mm(1[6-9]|2[0-9]|3[01])\b", line)]
    assert not evex, evex[:3]


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU flags Linux reports")
def test_the_path_is_offered_exactly_where_linux_reports_avx_vnni():
    from edgellama.native import BACKEND

    if BACKEND != "native":
        pytest.skip("the compiled extension is not built")
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx2" not in flags:
        pytest.skip("not an x86-64 CPU with AVX2")
    assert ("avxvnni" in kernels.available()) == ("avx_vnni" in flags and {"fma", "f16c"} <= flags)
