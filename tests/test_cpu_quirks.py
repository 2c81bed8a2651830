"""The AMX workaround: the seccomp filter refuses AMX tile state to the process it is installed
in (and its children) and nothing else; the probe tells where it is needed."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service import cpu_quirks

linux_x86_64 = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="seccomp filters on arch_prctl are Linux x86-64 only")

# In a child: install the filter, then report what the AMX permission request and another
# arch_prctl (ARCH_GET_FS, which always succeeds) return.
CHILD = textwrap.dedent("""
    import ctypes, sys
    from service.cpu_quirks import deny_amx
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.argv[1] == "deny":
        deny_amx()
    fs = ctypes.c_ulong()
    amx = libc.syscall(158, 0x1023, 18)
    errno = ctypes.get_errno()
    other = libc.syscall(158, 0x1003, ctypes.byref(fs))
    print(amx, errno, other)
""")


def run_child(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    return [int(field) for field in done.stdout.split()]


@linux_x86_64
def test_deny_amx_refuses_the_tile_state_request_with_eperm_and_nothing_else():
    amx, errno, other = run_child("deny")
    assert (amx, errno) == (-1, 1)  # EPERM
    assert other == 0


@linux_x86_64
def test_without_the_filter_the_request_is_not_refused_with_eperm():
    amx, errno, _ = run_child("allow")
    # granted where the CPU has AMX, EINVAL where it has none; never the filter's EPERM
    assert amx == 0 or errno != 1


def test_amx_is_advertised_only_with_the_amx_tile_flag(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert cpu_quirks.advertises_amx(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_quirks.advertises_amx(cpuinfo)
    assert not cpu_quirks.advertises_amx(tmp_path / "missing")


def test_amx_counts_as_not_running_when_the_probe_cannot_be_compiled():
    assert cpu_quirks.amx_runs(compiler="false") is False
