"""Optional API keys (OLLAMA_API_KEYS) on a real server, through curl-like requests, the official ollama,
OpenAI and Anthropic clients and the ollama CLI.

Keys from a file (comments and blank lines skipped) or a comma-separated list; ``GET /``, ``HEAD /``
and ``/api/version`` stay open, every other route answers 401 in its API family's error shape; a
key file that cannot be read stops the server at start-up; a server listening beyond loopback without
keys warns in its log.
"""

from __future__ import annotations

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import Server

MODEL = "smollm2:135m"
KEY = "k-7f3c9a1e5b2d4c6e8a0b"
SECOND = "k-second-0123456789abcdef"
RETIRED = "k-retired-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, smollm2_gguf):
    """A server whose keys come from a file; its CLI sends KEY (OLLAMA_API_KEY)."""
    home = tmp_path_factory.mktemp("keyed")
    keys = home / "api-keys"
    keys.write_text(f"# keys for the test server\n\n  {KEY}  \n# {RETIRED}\n{SECOND}\n")
    keys.chmod(0o600)
    server = Server(home, OLLAMA_API_KEYS=str(keys), OLLAMA_API_KEY=KEY, OLLAMA_KEEP_ALIVE="10m").start()
    server.import_smollm2(smollm2_gguf)
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_open_routes_need_no_key(keyed):
    with keyed.http() as http:
        assert http.get("/").text == "Ollama is running"
        assert http.head("/").status_code == 200
        assert http.get("/api/version").status_code == 200
        preflight = http.options("/api/chat", headers={"Origin": "http://localhost:3000",
                                                       "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 204 and "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_every_other_route_asks_for_a_key_in_its_family_shape(keyed):
    with keyed.http() as http:
        for method, path in (("GET", "/api/tags"), ("POST", "/api/chat"), ("POST", "/api/show"), ("GET", "/api/ps"),
                             ("GET", "/metrics"), ("GET", "/api/requests"), ("DELETE", "/api/requests/x"),
                             ("POST", "/api/pull"), ("GET", "/api/openapi.json")):
            reply = http.request(method, path)
            assert reply.status_code == 401, (method, path, reply.text)
            assert reply.json() == {"error": "missing API key: send it as Authorization: Bearer <key>"}
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = http.get("/api/tags", headers=bearer("k-7f3c9a1e5b2d4c6e8a0c"))  # one character off
        assert wrong.status_code == 401 and wrong.json() == {"error": "invalid API key"}
        assert http.get("/api/tags", headers=bearer(RETIRED)).status_code == 401  # a commented-out line
        assert http.get("/api/tags", headers={"Authorization": KEY}).status_code == 401  # no scheme
        assert http.get("/api/tags", headers={"Authorization": f"Basic {KEY}"}).status_code == 401

        openai_shape = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
        assert openai_shape.status_code == 401
        assert openai_shape.json() == {"error": {"message": "missing API key: send it as Authorization: Bearer <key>",
                                                 "type": "authentication_error", "param": None,
                                                 "code": "invalid_api_key"}}
        anthropic_shape = http.post("/v1/messages", headers={"x-api-key": "nope"}, json={})
        assert anthropic_shape.status_code == 401
        assert anthropic_shape.json() == {"type": "error", "error": {"type": "authentication_error",
                                                                     "message": "invalid API key"}}

        for headers in (bearer(KEY), bearer(SECOND), {"x-api-key": KEY}, {"authorization": f"bearer  {SECOND}"}):
            reply = http.get("/api/tags", headers=headers)
            assert reply.status_code == 200 and reply.json()["models"], (headers, reply.text)
        assert http.get("/metrics", headers=bearer(KEY)).status_code == 200
        # A refused request is still counted, under its route.
        metrics = http.get("/metrics", headers=bearer(KEY)).text
        assert 'ollama_http_requests_total{method="GET",route="/api/tags",status="401"}' in metrics


def test_official_clients_send_their_keys(keyed):
    client = ollama.Client(host=keyed.url, headers=bearer(KEY))
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=keyed.url).list()
    assert refused.value.status_code == 401

    oa = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=SECOND, max_retries=0)
    completion = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    with pytest.raises(openai.AuthenticationError) as refused_oa:
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert refused_oa.value.code == "invalid_api_key"

    an = anthropic.Anthropic(base_url=keyed.url, api_key=KEY, max_retries=0)
    message = an.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    assert message.usage.output_tokens == 3
    with pytest.raises(anthropic.AuthenticationError) as refused_an:
        anthropic.Anthropic(base_url=keyed.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    assert refused_an.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_the_cli_sends_ollama_api_key(keyed):
    assert MODEL in keyed.cli("list").stdout
    assert "REQUEST" in keyed.cli("ps", "-a").stdout
    keyed.env["OLLAMA_API_KEY"] = ""
    try:
        refused = keyed.cli("list", check=False)
    finally:
        keyed.env["OLLAMA_API_KEY"] = KEY
    assert refused.returncode != 0 and "missing API key" in refused.stderr, refused.stderr


def test_keys_as_a_list_and_without_keys(make_server):
    listed = make_server(OLLAMA_API_KEYS=f" {KEY} ,{SECOND},")
    assert httpx.get(f"{listed.url}/api/tags", timeout=30).status_code == 401
    for key in (KEY, SECOND):
        assert httpx.get(f"{listed.url}/api/tags", headers=bearer(key), timeout=30).status_code == 200
    assert httpx.get(f"{listed.url}/api/tags", headers={"Authorization": "Bearer"}, timeout=30).status_code == 401
    open_server = make_server()  # unset: today's behaviour
    assert httpx.get(f"{open_server.url}/api/tags", timeout=30).status_code == 200
    assert "API key" not in listed.log() + open_server.log()  # neither warns: both listen on loopback


def test_an_unreadable_key_file_stops_the_server(tmp_path):
    for spec, words in ((str(tmp_path / "missing"), "cannot read the API key file"),
                        (str(tmp_path / "empty"), "holds no key")):
        (tmp_path / "empty").write_text("# nothing yet\n\n")
        server = Server(tmp_path / "home", OLLAMA_API_KEYS=spec)
        with pytest.raises(RuntimeError, match="server exited"):
            server.start()
        assert words in server.log() and server.proc is not None and server.proc.returncode == 1


def test_listening_beyond_loopback_without_keys_warns(tmp_path):
    exposed = Server(tmp_path / "exposed")
    exposed.env["OLLAMA_HOST"] = f"0.0.0.0:{exposed.port}"
    guarded = Server(tmp_path / "guarded", OLLAMA_API_KEYS=KEY)
    guarded.env["OLLAMA_HOST"] = f"0.0.0.0:{guarded.port}"
    try:
        exposed.start()
        guarded.start()
        assert "without API keys" in exposed.log() and "OLLAMA_API_KEYS" in exposed.log()
        assert "without API keys" not in guarded.log()
        assert httpx.get(f"{guarded.url}/api/tags", timeout=30).status_code == 401
    finally:
        exposed.stop()
        guarded.stop()
