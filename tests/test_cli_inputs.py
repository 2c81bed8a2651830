"""The ``ttc-router`` subcommands other than ``eval`` and ``serve``, on what an operator
types: a port out of range, and a config file whose ``data_dir`` the commands that share the
data directory must honour alike. Nothing here starts a server."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.cli import build_parser, main


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


def test_revoking_the_last_key_warns_that_the_gateway_is_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # With no active key the gateway is open (README, "Keys"), so after revoking the last one
    # every client, the revoked key's holder included, is served; `keys revoke` used to say
    # only that a running gateway refuses the revoked key.
    monkeypatch.delenv("TTC_CONFIG", raising=False)
    monkeypatch.delenv("TTC_REQUIRE_KEYS", raising=False)
    base = ["--data-dir", str(tmp_path)]
    assert main(["keys", "create", "alice", *base]) == 0
    assert main(["keys", "create", "bob", *base]) == 0
    capsys.readouterr()
    assert main(["keys", "revoke", "alice", *base]) == 0
    assert "open" not in capsys.readouterr().err  # bob still guards it
    assert main(["keys", "revoke", "bob", *base]) == 0
    err = capsys.readouterr().err
    assert "no active key" in err and "require_keys" in err
    monkeypatch.setenv("TTC_REQUIRE_KEYS", "true")
    assert main(["keys", "create", "carol", *base]) == 0
    assert main(["keys", "revoke", "carol", *base]) == 0
    assert "no active key" not in capsys.readouterr().err  # require_keys keeps it closed


def test_sim_names_a_world_tasks_file_it_cannot_write(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # It used to end in a FileNotFoundError traceback.
    target = tmp_path / "no-such-folder" / "held-out.jsonl"
    assert main(["sim", "--world-seed", "3", "--world-tasks", str(target)]) == 2
    err = capsys.readouterr().err
    assert "--world-tasks" in err and "Traceback" not in err


def test_index_add_of_a_folder_with_no_document_file_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A folder of PDFs used to report "added 0 documents from 0 files" and exit 0.
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "paper.pdf").write_bytes(b"%PDF-1.4")
    code = main(["index", "add", str(folder), "--data-dir", str(tmp_path / "state")])
    assert code == 2
    assert "no .jsonl, .txt or .md file" in capsys.readouterr().err


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser under it, at any depth."""
    found = [parser]
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_every_help_text_reads_percent_signs_as_written() -> None:
    # `ttc-router ab report --help` printed "its 95%% Wilson interval": argparse %-formats
    # an argument's help, not a parser's description, so a doubled % there shows as typed.
    for parser in _parsers(build_parser()):
        assert "%%" not in parser.format_help(), parser.prog
