"""Building llama-server: the cache keyed by llama-cpp-python's version, the steps' errors and
progress, and the unpacking of the sdist. The real build runs in ``make install``."""

from __future__ import annotations

import fcntl
import io
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from service import llama_build
from service.llama_build import LlamaBuildError, binary_path, ensure_server, find_server


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(llama_build, "installed_version", lambda: "9.9.9")
    return tmp_path / "cache"


def built(cache: Path) -> Path:
    path = binary_path("9.9.9")
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_cache_is_keyed_by_llama_cpp_pythons_version(cache):
    assert binary_path("0.3.16") == cache / "llama-server-0.3.16" / "llama-server"


def test_cache_root_follows_xdg_when_not_set(monkeypatch, tmp_path):
    monkeypatch.delenv("TTC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert llama_build.cache_root() == tmp_path / "ttc-router"


def test_find_server_is_none_until_built_then_the_binary(cache):
    assert find_server() is None
    path = built(cache)
    assert find_server() == path


def test_find_server_is_none_without_llama_cpp_python(cache, monkeypatch):
    built(cache)
    monkeypatch.setattr(llama_build, "installed_version", lambda: None)
    assert find_server() is None


def test_a_cached_server_is_not_rebuilt(cache, monkeypatch):
    path = built(cache)

    def no_build(*args, **kwargs):
        raise AssertionError("a cached server must not be rebuilt")

    monkeypatch.setattr(subprocess, "Popen", no_build)
    assert ensure_server(progress=io.StringIO()) == path


def test_building_without_cmake_says_so(cache, monkeypatch):
    monkeypatch.setattr(llama_build.shutil, "which", lambda name: None)
    with pytest.raises(LlamaBuildError, match="needs cmake"):
        ensure_server(progress=io.StringIO())


def test_building_without_llama_cpp_python_says_what_to_install(cache, monkeypatch):
    monkeypatch.setattr(llama_build, "installed_version", lambda: None)
    with pytest.raises(LlamaBuildError, match=r"pip install '\.\[local\]'"):
        ensure_server(progress=io.StringIO())


def test_best_effort_explains_the_fallback_and_exits_0(cache, monkeypatch, capsys):
    monkeypatch.setattr(llama_build.shutil, "which", lambda name: None)
    assert llama_build.main(["--best-effort"]) == 0
    err = capsys.readouterr().err
    assert "llama-server was not built: building llama-server needs cmake" in err
    assert "falls back to llama-cpp-python's server" in err
    assert llama_build.main([]) == 1


def test_a_failing_step_names_its_exit_code_and_log(tmp_path):
    log_path = tmp_path / "build.log"
    with log_path.open("wb") as log, pytest.raises(LlamaBuildError) as raised:
        llama_build._run(["sh", "-c", "echo boom; exit 4"], log, log_path)
    assert "exit code 4" in str(raised.value) and str(log_path) in str(raised.value)
    assert "boom" in log_path.read_text()


def test_cmakes_percentages_are_echoed_as_progress(tmp_path):
    progress = io.StringIO()
    with (tmp_path / "build.log").open("wb") as log:
        llama_build._run(["printf", r"[  9%%] Building a\n[ 55%%] Building b\nother\n"], log,
                         tmp_path / "build.log", progress)
    assert progress.getvalue() == "\rbuilding llama-server:   9%\rbuilding llama-server:  55%"


def test_only_vendor_llama_cpp_is_unpacked(tmp_path, monkeypatch):
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in ("llama_cpp_python-9.9.9/vendor/llama.cpp/CMakeLists.txt",
                     "llama_cpp_python-9.9.9/pyproject.toml"):
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    work = tmp_path / "work"
    work.mkdir()

    def fake_pip_download(command, log, log_path, progress=None):
        assert command[1:4] == ["-m", "pip", "download"] and "llama-cpp-python==9.9.9" in command
        (work / sdist.name).write_bytes(sdist.read_bytes())

    monkeypatch.setattr(llama_build, "_run", fake_pip_download)
    with (tmp_path / "log").open("wb") as log:
        source = llama_build._unpacked_source("9.9.9", work, log, io.StringIO())
    assert source == work / "src" / "llama_cpp_python-9.9.9" / "vendor" / "llama.cpp"
    assert (source / "CMakeLists.txt").is_file()
    assert not (work / "src" / "llama_cpp_python-9.9.9" / "pyproject.toml").exists()


def test_a_second_set_up_waits_for_the_first_build_and_says_so(cache, tmp_path):
    path = binary_path("9.9.9")
    path.parent.mkdir(parents=True)
    progress = io.StringIO()
    with (path.parent / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: ensure_server(progress=progress))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()  # blocked on the lock, not building
        path.write_text("#!/bin/sh\n")  # the first set-up finishes its build
        path.chmod(0o755)
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(5)
    assert not waiter.is_alive()
    assert "another set-up is building llama-server" in progress.getvalue()


def test_best_effort_set_up_does_not_wait_for_another_build(cache, capsys):
    path = binary_path("9.9.9")
    path.parent.mkdir(parents=True)
    with (path.parent / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert llama_build.main(["--best-effort"]) == 0
    err = capsys.readouterr().err
    assert "another set-up is building it now" in err
    assert "falls back to llama-cpp-python's server" in err
