"""CPUs that advertise AMX but trap on it, and the way round it for llama.cpp's servers.

Some virtual machines report Intel AMX (``amx_tile`` in /proc/cpuinfo) and grant the kernel
permission for its tile state, yet executing an AMX instruction raises SIGILL. llama.cpp built
with ``-march=native`` (llama-cpp-python's wheel and ``llama-server`` alike) then dies on its
first prompt of more than one token, in ggml's AMX matrix multiply (``tilezero``).

ggml uses AMX only after asking the kernel for the tile state
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, ggml-cpu/amx/amx.cpp); when that
request fails it prints "AMX is not ready to be used!" and keeps to its AVX-512/AVX2 kernels.
``deny_amx`` makes exactly that request fail in the calling process and its children, with a
seccomp filter (Linux x86-64), so the servers run unchanged builds safely.
``amx_traps`` decides when it is needed: the CPU advertises AMX and a 15-line C program that
zeroes one tile does not run (or cannot be compiled, to stay safe).
"""

from __future__ import annotations

import ctypes
import functools
import platform
import struct
import subprocess
import tempfile
from pathlib import Path

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1
_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_ARCH_PRCTL = 158  # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
# Classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}: fail
# arch_prctl(ARCH_REQ_XCOMP_PERM, ...) with EPERM, allow everything else.
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_FILTER = (
    (_LD_W_ABS, 0, 0, 4),                      # arch
    (_JEQ_K, 0, 5, _AUDIT_ARCH_X86_64),        # another ABI: allow
    (_LD_W_ABS, 0, 0, 0),                      # syscall number
    (_JEQ_K, 0, 3, _NR_ARCH_PRCTL),            # not arch_prctl: allow
    (_LD_W_ABS, 0, 0, 16),                     # first argument, low 32 bits
    (_JEQ_K, 0, 1, _ARCH_REQ_XCOMP_PERM),      # another arch_prctl: allow
    (_RET_K, 0, 0, _SECCOMP_RET_ERRNO | _EPERM),
    (_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
)

_AMX_PROBE = r"""
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    unsigned char config[64];
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 2;
    memset(config, 0, sizeof config);
    config[0] = 1; config[16] = 64; config[48] = 16;  /* palette 1; tmm0: 16 rows x 64 bytes */
    _tile_loadconfig(config);
    _tile_zero(0);
    _tile_release();
    return 0;
}
"""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def advertises_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU reports AMX tiles (``amx_tile``) to the kernel."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " amx_tile" in line for line in text.splitlines())


def amx_runs(compiler: str = "cc") -> bool:
    """Whether a C program that zeroes one AMX tile builds and exits 0 here (False: it could
    not be compiled, or the kernel or CPU refused AMX)."""
    with tempfile.TemporaryDirectory(prefix="ttc-amx-probe-") as work:
        source = Path(work) / "probe.c"
        source.write_text(_AMX_PROBE)
        program = Path(work) / "probe"
        try:
            built = subprocess.run([compiler, "-O1", "-mamx-tile", "-o", str(program),
                                    str(source)], capture_output=True, check=False, timeout=60)
            if built.returncode != 0:
                return False
            return subprocess.run([str(program)], capture_output=True, check=False,
                                  timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


@functools.lru_cache(maxsize=1)
def amx_traps() -> bool:
    """Whether llama.cpp must be kept off AMX here: the CPU advertises it and it does not run
    (``amx_runs``). Measured once per process."""
    return platform.machine() == "x86_64" and advertises_amx() and not amx_runs()


def deny_amx() -> None:
    """Make the kernel refuse AMX tile state (``ARCH_REQ_XCOMP_PERM``) to this process and
    every process it starts from now on; call it in a child before ``exec``.

    Raises:
        OSError: the kernel refused the filter (no seccomp, or not Linux x86-64).
    """
    program = b"".join(struct.pack("HBBI", *instruction) for instruction in _FILTER)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(_FILTER), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    # Unprivileged processes may install a filter only once they can never gain privileges.
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
            _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"seccomp filter refused: {errno}")
