"""``ttc-router eval`` as a user runs it, on the mistakes a user makes: an empty tasks file, an
``--out`` that is a file, a URL that wants a key or lacks ``/v1``, a backend that fails every
request. Each gets a clear message and a non-zero exit status, never a traceback or a report
that reads as a result. Nothing here starts a server: port 9 refuses connections, and the
answers of a backend come from ``httpx.MockTransport``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from router_models.tasks import load_tasks_file
from service.cli import main
from service.evaluation import runner

REFUSED = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, connections are refused


def _tasks(tmp_path: Path) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"question": "What is 2+3?", "answer": "5"}) + "\n")
    return path


def _eval(*argv: str) -> int:
    return main(["eval", "--no-progress", *argv])


def test_an_empty_tasks_file_is_refused(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # It used to write an empty report and exit 0, as if the run had measured something.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code = _eval("--backend", REFUSED, "--tasks", str(empty), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "empty.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_a_clear_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # It used to end in a FileExistsError traceback.
    tasks = _tasks(tmp_path)
    code = _eval("--backend", REFUSED, "--mode", "gateway", "--tasks", str(tasks),
                 "--out", str(tasks))
    assert code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err


def test_a_run_where_every_request_failed_exits_1_naming_the_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # It used to exit 0 with an empty winner table (and a matplotlib warning about empty plots).
    out = tmp_path / "out"
    code = _eval("--backend", REFUSED, "--mode", "gateway", "--tasks", str(_tasks(tmp_path)),
                 "--strategies", "direct", "--budgets", "64", "--out", str(out))
    assert code == 1
    err = capsys.readouterr().err
    assert "every request failed" in err and "ConnectError" in err
    assert (out / "items.jsonl").is_file()  # kept, so the failures can be read
    assert not list(out.glob("*.png"))  # nothing measured, nothing to plot


@pytest.mark.parametrize(("status", "hint"), [(401, "--api-key"), (404, "/v1")])
async def test_a_models_list_refused_says_what_to_fix(tmp_path: Path, status: int,
                                                      hint: str) -> None:
    # The message used to be httpx's, ending in a developer.mozilla.org link.
    transport = httpx.MockTransport(lambda request: httpx.Response(
        status, json={"error": {"message": "nope"}}))
    options = runner.RunOptions(backend="http://gw.test", transport=transport)
    jobs = runner.plan_jobs(load_tasks_file(_tasks(tmp_path)), ["direct"], [64])
    with pytest.raises(runner.EvalError, match=f"HTTP {status}") as caught:
        await runner.run_jobs(jobs, tmp_path / "out", options)
    assert hint in str(caught.value)
    assert "mozilla" not in str(caught.value)


def test_client_mode_says_it_skips_search_and_policies(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    # Against a plain backend, search and --policies need the gateway; they used to be dropped
    # silently, and a run of only those wrote an empty report and exited 0.
    code = _eval("--backend", REFUSED, "--mode", "client", "--tasks", str(_tasks(tmp_path)),
                 "--strategies", "search", "--budgets", "64", "--policies", "auto",
                 "--out", str(tmp_path / "out"))
    assert code == 2
    err = capsys.readouterr().err
    assert "search" in err and "policy:auto" in err and "gateway" in err


def test_repeated_strategies_and_budgets_are_sent_once(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    # `--budgets 128,128` used to send every request twice and keep one record of the two.
    out = tmp_path / "out"
    _eval("--backend", REFUSED, "--mode", "gateway", "--tasks", str(_tasks(tmp_path)),
          "--strategies", "direct,direct", "--budgets", "64,64", "--out", str(out))
    assert "1 sent now" in capsys.readouterr().err
    assert len((out / "items.jsonl").read_text().splitlines()) == 1


async def test_a_key_refused_is_not_told_to_give_a_key(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={}))
    options = runner.RunOptions(backend="http://gw.test", transport=transport, api_key="old")
    jobs = runner.plan_jobs(load_tasks_file(_tasks(tmp_path)), ["direct"], [64])
    with pytest.raises(runner.EvalError, match="refused the key given with --api-key"):
        await runner.run_jobs(jobs, tmp_path / "out", options)


async def test_an_out_folder_of_another_backend_is_not_resumed(tmp_path: Path) -> None:
    # Resuming used to take the folder's records as already measured: a second backend run
    # into the same --out (./eval-out by default) sent nothing and reported the first's
    # results under its own name.
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(200, json={"choices": [{"message": {"content": "5"}}],
                                         "usage": {"completion_tokens": 1}})

    transport = httpx.MockTransport(handle)
    jobs = runner.plan_jobs(load_tasks_file(_tasks(tmp_path)), ["direct"], [64])
    out = tmp_path / "out"
    first = runner.RunOptions(backend="http://a.test/v1", transport=transport)
    assert (await runner.run_jobs(jobs, out, first))[1] == 1
    assert (await runner.run_jobs(jobs, out, first))[1] == 0  # the same run resumes
    for other in (runner.RunOptions(backend="http://b.test/v1", transport=transport),
                  runner.RunOptions(backend="http://a.test/v1", model="other",
                                    transport=transport)):
        with pytest.raises(runner.EvalError, match="--out"):
            await runner.run_jobs(jobs, out, other)


@pytest.mark.parametrize("mode", ["auto", "client"])
async def test_client_mode_asks_for_the_backends_model_not_auto(tmp_path: Path,
                                                                mode: str) -> None:
    # Pointed straight at a plain backend (vLLM, the README's "against a backend directly"),
    # eval sent `model: "auto"`, which such a backend does not serve (that is how client mode
    # was detected): every request was a 404 and the run exited 1 having measured nothing.
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": "served-model", "object": "model"}, {"id": "other", "object": "model"}]})
        model = json.loads(request.content)["model"]
        sent.append(model)
        if model != "served-model":
            return httpx.Response(404, json={"error": {
                "message": f"The model `{model}` does not exist.", "type": "NotFoundError"}})
        return httpx.Response(200, json={"choices": [{"message": {"content": "5"}}],
                                         "usage": {"completion_tokens": 1}})

    jobs = runner.plan_jobs(load_tasks_file(_tasks(tmp_path)), ["direct"], [64])
    out = tmp_path / "out"
    options = runner.RunOptions(backend="http://vllm.test/v1", mode=mode,
                                transport=httpx.MockTransport(handle))
    assert (await runner.run_jobs(jobs, out, options)) == ("client", 1)
    assert sent == ["served-model"]
    assert not any(r["error"] for r in runner.read_records(out / runner.ITEMS_FILE))
    # The folder names the model measured, which the report's header shows.
    assert json.loads((out / runner.RUN_FILE).read_text())["model"] == "served-model"
    # A model named with --model is sent as given.
    named = runner.RunOptions(backend="http://vllm.test/v1", mode=mode, model="other",
                              transport=httpx.MockTransport(handle))
    await runner.run_jobs(jobs, tmp_path / "named", named)
    assert sent[-1] == "other"


def test_a_strategy_or_policy_whose_every_request_failed_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # `--policies rules,nope` (a misspelt policy): every request of policy:nope was a 400, yet
    # the run said only "6 records (2 errors)" and exited 0, the arm a row of zeros.
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "auto"}, {"id": "m"}]})
        router = json.loads(request.content).get("router", {})
        if router.get("policy") == "nope":
            return httpx.Response(400, json={"error": {
                "message": "unknown policy 'nope'; known: learned, rules",
                "type": "invalid_request_error", "param": "router.policy", "code": None}})
        return httpx.Response(200, json={"choices": [{"message": {"content": "5"}}],
                                         "usage": {"completion_tokens": 1}})

    real = runner.RunOptions
    monkeypatch.setattr(runner, "RunOptions", lambda **options: real(
        **options, transport=httpx.MockTransport(handle)))
    code = _eval("--backend", "http://gw.test/v1", "--tasks", str(_tasks(tmp_path)),
                 "--strategies", "direct", "--budgets", "64", "--policies", "rules,nope",
                 "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 0  # the other points were measured
    named = [line for line in err.splitlines() if "every request of" in line]
    assert len(named) == 1, err
    assert "policy:nope" in named[0] and "unknown policy 'nope'" in named[0]


def test_tasks_without_a_family_are_grouped_under_their_file(tmp_path: Path) -> None:
    # They were reported as `independent_mc`, a family of the project's simulator that says
    # something about the tasks (independent guesses, multiple choice) nobody claimed.
    out = tmp_path / "out"
    _eval("--backend", REFUSED, "--mode", "gateway", "--tasks", str(_tasks(tmp_path)),
          "--strategies", "direct", "--budgets", "64", "--out", str(out))
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [r["family"] for r in records] == ["tasks"]
