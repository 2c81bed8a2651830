"""CORS (``cors_allow_origins``): a web app's page on another origin may call the gateway,
completions included, only when the operator allows that origin."""

from __future__ import annotations

import pytest

from service.settings import Settings
from tests.conftest import gateway_client, make_settings
from tests.fakes import FakeBackend

CHAT = "/v1/chat/completions"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "What is 2+2?"}]}
APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/models", "/v1/feedback"])
async def test_an_allowed_origin_passes_the_preflight_and_reads_the_reply(path):
    settings = make_settings(cors_allow_origins=[APP])
    async with gateway_client(FakeBackend().transport(), settings) as client:
        preflight = await client.options(path, headers=PREFLIGHT)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        reply = await client.post(CHAT, json=BODY, headers={"Origin": APP})
        assert reply.status_code == 200, reply.text
        assert reply.headers["access-control-allow-origin"] == APP
        exposed = reply.headers["access-control-expose-headers"].lower()
        assert "x-ttc-strategy" in exposed and "x-ratelimit-remaining-requests" in exposed


async def test_other_origins_and_the_default_get_no_cors_headers():
    allowed = make_settings(cors_allow_origins=[APP])
    async with gateway_client(FakeBackend().transport(), allowed) as client:
        preflight = await client.options(CHAT, headers={**PREFLIGHT,
                                                        "Origin": "https://evil.example"})
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        reply = await client.post(CHAT, json=BODY, headers={"Origin": "https://evil.example"})
        assert reply.status_code == 200 and "access-control-allow-origin" not in reply.headers
    async with gateway_client(FakeBackend().transport(), make_settings()) as client:
        reply = await client.post(CHAT, json=BODY, headers={"Origin": APP})
        assert reply.status_code == 200 and "access-control-allow-origin" not in reply.headers


def test_origins_come_from_the_environment_comma_separated(monkeypatch):
    monkeypatch.setenv("TTC_CORS_ALLOW_ORIGINS", f"{APP}, http://localhost:3000")
    assert Settings().cors_allow_origins == [APP, "http://localhost:3000"]
    monkeypatch.setenv("TTC_CORS_ALLOW_ORIGINS", "*")
    assert Settings().cors_allow_origins == ["*"]
