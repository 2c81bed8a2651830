"""Bad inputs to the outcome bank's tools give a clear message and exit status 2, never a
traceback: a bank folder or file that is not a bank (``router_models.bank``), and bad option
values of ``ttc-router eval --bank``, ``bench/bank_findings.py``, ``bench/bank_figures.py`` and
``bench/bank_feedback.py``. Nothing here starts a server."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from router_models.bank import Bank, BankError

FIXTURE = Path(__file__).parent / "bank_fixture"


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "bank"
    shutil.copytree(FIXTURE, folder)
    return folder


@pytest.mark.parametrize("line", ["[1, 2]", '"a run"', "3"])
def test_a_line_that_is_json_but_not_an_object_is_a_bank_error(tmp_path: Path,
                                                              line: str) -> None:
    folder = _copy(tmp_path)
    with (folder / "fixture-001.jsonl").open("a") as shard:
        shard.write(line + "\n")
    with pytest.raises(BankError, match=r"fixture-001\.jsonl:6: not a bank run"):
        Bank.load(folder)


def test_a_sample_that_is_not_an_object_is_a_bank_error(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    shard = folder / "fixture-001.jsonl"
    lines = shard.read_text().splitlines()
    lines[0] = lines[0].replace('"samples":[{', '"samples":["oops",{', 1)
    assert '"oops"' in lines[0]
    shard.write_text("\n".join(lines) + "\n")
    with pytest.raises(BankError, match=r"fixture-001\.jsonl:1: not a bank run"):
        Bank.load(folder)


def test_a_malformed_bank_json_is_a_bank_error_naming_it(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "bank.json").write_text("{oops")
    with pytest.raises(BankError, match=r"bank\.json: not valid JSON"):
        Bank.load(folder)
    (folder / "bank.json").write_text("[1]")
    with pytest.raises(BankError, match=r"bank\.json: not a JSON object"):
        Bank.load(folder)


def _eval(argv: list[str]) -> int:
    from service.cli import main

    return main(["eval", "--backend", "http://127.0.0.1:9/v1", "--no-progress", *argv])


@pytest.mark.parametrize("option", [["--limit", "0"], ["--limit", "-1"],
                                    ["--concurrency", "0"], ["--timeout-s", "0"]])
def test_eval_refuses_values_that_cannot_mean_anything(option: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    # --limit 0 used to run the whole bank; the backend (port 9) is never reached.
    code = _eval(["--bank", str(FIXTURE), "--out", str(tmp_path / "out"), *option])
    assert code == 2
    assert option[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_names_a_bank_that_is_not_one(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy(tmp_path)
    (folder / "bank.json").write_text("{oops")
    assert _eval(["--bank", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "bank.json: not valid JSON" in capsys.readouterr().err


def _findings(argv: list[str]) -> object:
    from bench.bank_findings import main

    return main(argv)


def _figures(argv: list[str]) -> object:
    from bench.bank_figures import main

    return main(argv)


def _feedback(argv: list[str]) -> object:
    from bench.bank_feedback import main

    return main(["--classifier", "shipped", *argv])


TOOLS = [_findings, _figures, _feedback]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("argv, message", [
    (["--bank", "/nonexistent-bank"], "no outcome bank at /nonexistent-bank"),
    (["--budgets", "abc"], "--budgets"),
    (["--budgets", "-4"], "--budgets"),
    (["--budgets", "0,128"], "--budgets"),
])
def test_bench_tools_refuse_bad_input_with_a_message(
        tool: Callable[[list[str]], object], argv: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bank = [] if "--bank" in argv else ["--bank", str(FIXTURE)]
    with pytest.raises(SystemExit) as exit_info:
        tool([*bank, *argv, "--out", str(tmp_path / "out")] if tool is not _figures
             else [*bank, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bench_tools_refuse_an_empty_bank(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for tool in TOOLS:
        with pytest.raises(SystemExit) as exit_info:
            tool(["--bank", str(empty)])
        assert exit_info.value.code == 2
        assert "holds no runs" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["--folds", "1"], "--folds"), (["--rounds", "-1"], "--rounds"),
    (["--limit", "0"], "--limit"), (["--exploration", "1.5"], "--exploration"),
    (["--targets", "x"], "--targets"),
])
def test_bank_feedback_refuses_bad_options_before_anything_starts(
        argv: list[str], option: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _feedback(["--bank", str(FIXTURE), *argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_descriptions_are_whole_sentences(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse's description used to be the docstring's first line, cut mid-sentence
    # ("... without a gateway or model:", "(no gateway, no").
    for tool in TOOLS:
        with pytest.raises(SystemExit):
            tool(["--help"])
        description = capsys.readouterr().out.split("options:")[0].split("\n\n", 1)[1]
        text = " ".join(description.split())
        assert text.endswith((".", ")")), text


@pytest.mark.parametrize("option", [["--world-seed", "3"], ["--world", "w.yaml"],
                                    ["--tasks", "t.jsonl"], ["--data", "d"],
                                    ["--world-tasks", "out.jsonl"]])
def test_sim_bank_refuses_the_simulators_options(option: list[str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # They used to be ignored silently: `sim --bank --world-seed 3` served the bank.
    import uvicorn

    from service.cli import main

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("the replay started although its options were refused")

    monkeypatch.setattr(uvicorn, "run", no_server)
    assert main(["sim", "--bank", str(FIXTURE), *option]) == 2
    err = capsys.readouterr().err
    assert option[0] in err and "--bank" in err


@pytest.mark.parametrize("argv", [["--items", "0"], ["--samples", "0"], ["--max-tokens", "-5"],
                                  ["--concurrency", "0"], ["--threads", "0"], ["--ctx", "x"],
                                  ["--temperature", "0"], ["--temperature", "2.5"]])
def test_the_recorder_refuses_bad_values_before_it_reads_the_bank(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # Only the arguments are parsed: nothing is recorded, no server starts. --items 0 used to
    # reach load_suite(limit=0), which reads a data suite whole.
    from bench.outcome_bank import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_a_whole_last_line_without_a_newline_is_read_and_a_partial_one_skipped(
        tmp_path: Path) -> None:
    # A shard saved by an editor may lack the final newline: its last run used to be dropped
    # silently, as if the recorder were still appending it. Only a line that does not parse
    # yet (the recorder mid-write) is skipped now.
    folder = _copy(tmp_path)
    shard = folder / "fixture-001.jsonl"
    whole = len(Bank.load(folder))
    shard.write_text(shard.read_text().rstrip("\n"))
    assert len(Bank.load(folder)) == whole
    shard.write_text(shard.read_text() + '\n{"key": "arith')
    assert len(Bank.load(folder)) == whole
