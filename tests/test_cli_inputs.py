"""The ``ttc-router`` subcommands other than ``eval`` and ``serve``, on what an operator
types: a port out of range, and a config file whose ``data_dir`` the commands that share the
data directory must honour alike. Nothing here starts a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_sim_refuses_a_port_out_of_range(port: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # 99999 used to be announced as such while the socket bound 99999 % 65536 = 34463.
    with pytest.raises(SystemExit) as exited:
        main(["sim", "--port", port])
    assert exited.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_index_add_and_stats_read_data_dir_from_the_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # `serve --config FILE` reads the index under the file's data_dir; `index add` had no
    # --config, so it filled the default data directory, which that gateway never reads.
    monkeypatch.delenv("TTC_DATA_DIR", raising=False)
    monkeypatch.delenv("TTC_CONFIG", raising=False)
    data_dir = tmp_path / "state"
    config = tmp_path / "ttc.yaml"
    config.write_text(f"data_dir: {data_dir}\n")
    doc = tmp_path / "notes.txt"
    doc.write_text("The Zorblat river flows through Quenton.\n")
    assert main(["index", "add", str(doc), "--config", str(config)]) == 0
    assert main(["index", "stats", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert str(data_dir / "search-index") in out
    assert "documents  1" in out
