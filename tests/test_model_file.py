"""Where the embedded model's assembled GGUF file lives: once per machine (the user's cache,
``$TTC_CACHE_DIR/models``), not once per data directory, and still from the installed part
packages alone (no network). The parts are small stand-in distributions on ``sys.path``; the
real 491 MB model is assembled only by the embedded backend and the local image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.local_backend import LocalBackendError, LocalModel, model_path

PARTS = (b"GGUF first half of the weights ", b"and the second half")


def install_parts(site: Path, contents: tuple[bytes, ...] = PARTS) -> LocalModel:
    """Stand-in part distributions ``ttc-test-part1`` .. under ``site`` (a sys.path entry),
    each carrying ``data/partNN.bin``, and the model they assemble into."""
    parts = []
    for i, content in enumerate(contents, 1):
        name = f"ttc_test_part{i}"
        info = site / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ttc-test-part{i}\n"
                                       "Version: 1.0\n")
        data = site / name / "data" / f"part0{i}.bin"
        data.parent.mkdir(parents=True)
        data.write_bytes(content)
        (info / "RECORD").write_text(f"{name}/data/part0{i}.bin,,\n{info.name}/METADATA,,\n")
        parts.append((f"ttc-test-part{i}", f"data/part0{i}.bin"))
    whole = b"".join(contents)
    return LocalModel(alias="test-model", file_name="test-model.gguf", parts=tuple(parts),
                      size_bytes=len(whole), sha256=hashlib.sha256(whole).hexdigest())


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalModel:
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path / "cache"))
    return install_parts(tmp_path / "site")


def test_two_data_directories_share_one_assembled_model(model, tmp_path):
    # Every data directory assembled its own copy (491 MB each): the user's, CI's, each
    # test run's and each replica's on one machine.
    first = model_path(model, tmp_path / "data-a" / "models")
    second = model_path(model, tmp_path / "data-b" / "models")
    assert first == second == tmp_path / "cache" / "models" / "test-model.gguf"
    assert first.read_bytes() == b"".join(PARTS)
    assert not (tmp_path / "data-a" / "models").exists()
    assert not (tmp_path / "data-b" / "models").exists()


def test_a_copy_already_in_a_data_directory_is_used_as_before(model, tmp_path):
    # The local image assembles into /data/models at build time and uninstalls the parts;
    # data directories set up by earlier versions hold a copy too.
    models = tmp_path / "data" / "models"
    made = model_path(model, models, shared_dir=models)
    assert made == models / "test-model.gguf"
    assert model_path(model, models) == made
    assert not (tmp_path / "cache").exists()


def test_a_cache_that_cannot_be_written_falls_back_to_the_data_directory(
        model, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("TTC_CACHE_DIR", str(blocked))
    models = tmp_path / "data" / "models"
    assert model_path(model, models) == models / "test-model.gguf"
    assert (models / "test-model.gguf").read_bytes() == b"".join(PARTS)


def test_a_shared_copy_of_another_release_is_not_used(model, tmp_path):
    # A stamp from another release of the model (same file name and size, other digest):
    # the file is assembled again from the installed parts.
    shared = tmp_path / "cache" / "models"
    shared.mkdir(parents=True)
    (shared / "test-model.gguf").write_bytes(bytes(model.size_bytes or 0))
    (shared / "test-model.sha256").write_text("0" * 64 + "\n")
    assert model_path(model, tmp_path / "data" / "models").read_bytes() == b"".join(PARTS)
    assert (shared / "test-model.sha256").read_text().strip() == model.sha256


def test_parts_that_do_not_verify_leave_no_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path / "cache"))
    model = install_parts(tmp_path / "site")
    wrong = LocalModel(model.alias, model.file_name, model.parts, model.size_bytes,
                       sha256="f" * 64)
    with pytest.raises(LocalBackendError, match="SHA-256"):
        model_path(wrong, tmp_path / "data" / "models")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_missing_part_package_says_which_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("TTC_CACHE_DIR", str(tmp_path / "cache"))
    model = LocalModel("absent", "absent.gguf", (("ttc-test-absent-part", "data/x.bin"),),
                       None, None)
    with pytest.raises(LocalBackendError, match="ttc-test-absent-part"):
        model_path(model, tmp_path / "data" / "models")
