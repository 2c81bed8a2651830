"""llama.cpp's own ``llama-server`` as the embedded backend: parallel slots decoded together
(continuous batching), so the samples of a vote cost little more wall time than one.

The binary is the one ``service.llama_build`` built from the installed llama-cpp-python's
sdist. Each of ``slots`` parallel sequences gets ``n_ctx`` tokens of context: llama-server
splits its ``-c`` context evenly between ``-np`` slots (its unified KV cache is off by
default), so the whole context asked for is ``slots x n_ctx``. For Qwen2.5-0.5B (24 layers, 2
KV heads of 64 dimensions, f16) the KV cache takes 12 KiB a token: 8 slots x 4096 tokens is
0.4 GiB.
"""

from __future__ import annotations

import os
from pathlib import Path

from service.local_backend import LocalBackend, LocalBackendError

# Decoding one sequence on a CPU is bound by reading the weights; batching reuses each read
# across sequences, which pays off up to several sequences per core (issue 14 measured 38, 61
# and 81 tokens/s at 1, 4 and 8 concurrent requests on 2 cores). More slots than the
# gateway's fan-out of one vote (``fanout_concurrency``, 8) only help other clients.
SLOTS_PER_CORE = 4


def default_slots(fanout_concurrency: int, cores: int | None = None) -> int:
    """Parallel slots for this machine: ``SLOTS_PER_CORE`` per core, at most
    ``fanout_concurrency`` (the most calls one vote sends at once), at least 1."""
    return max(1, min(fanout_concurrency, SLOTS_PER_CORE * (cores or os.cpu_count() or 1)))


class LlamaServer(LocalBackend):
    """``llama-server`` as a child process.

    Args:
        binary: the ``llama-server`` executable.
        model_file, alias, threads, log_file: as for ``LocalBackend``.
        n_ctx: context per slot (tokens).
        slots: parallel sequences decoded together (``-np``).
    """

    name = "llama.cpp's llama-server"

    def __init__(self, binary: Path, model_file: Path, alias: str, *, n_ctx: int = 4096,
                 slots: int = 8, threads: int | None = None, log_file: Path | None = None):
        super().__init__(model_file, alias, n_ctx=n_ctx, threads=threads, log_file=log_file)
        self.binary = binary
        self.slots = slots

    @property
    def ready_url(self) -> str:
        # /v1/models answers while the model is still loading; /health turns 200 once loaded.
        return f"http://127.0.0.1:{self.port}/health"

    def command(self) -> list[str]:
        """``llama-server`` with ``slots`` slots of ``n_ctx`` tokens and continuous batching.

        Raises:
            LocalBackendError: the binary is missing or not executable.
        """
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise LocalBackendError(f"{self.binary} is not an executable llama-server; "
                                    "build it with `make llama-server`")
        threads = str(self.threads or os.cpu_count() or 1)
        return [str(self.binary), "--model", str(self.model_file), "--alias", self.alias,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--ctx-size", str(self.n_ctx * self.slots), "--parallel", str(self.slots),
                "--cont-batching", "--threads", threads, "--threads-batch", threads,
                # The gateway reads completions over the API only.
                "--no-webui"]
