import dataclasses
import ipaddress
import logging
import math
import socket
from pathlib import Path

import pytest

from appliance import envconfig
from appliance.envconfig import Config, Host, describe, host_header_allowed, is_loopback_bind, origin_allowed

INF = math.inf


def cfg(**env: str) -> Config:
    return Config.from_env({"HOME": "/home/u", **env})


# --- OLLAMA_HOST -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ollama_form", "client_url", "bind"),
    [
        # Ollama's own TestHost / TestConnectableHost cases
        ("", "http://127.0.0.1:11434", "http://127.0.0.1:11434", ("127.0.0.1", 11434)),
        ("1.2.3.4", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        (":1234", "http://:1234", "http://127.0.0.1:1234", ("", 1234)),
        ("1.2.3.4:1234", "http://1.2.3.4:1234", "http://1.2.3.4:1234", ("1.2.3.4", 1234)),
        ("example.com", "http://example.com:11434", "http://example.com:11434", ("example.com", 11434)),
        ("example.com:1234", "http://example.com:1234", "http://example.com:1234", ("example.com", 1234)),
        (":0", "http://:0", "http://127.0.0.1:0", ("", 0)),
        (":66000", "http://:11434", "http://127.0.0.1:11434", ("", 11434)),
        (":-1", "http://:11434", "http://127.0.0.1:11434", ("", 11434)),
        ("[::1]", "http://[::1]:11434", "http://[::1]:11434", ("::1", 11434)),
        ("[::]", "http://[::]:11434", "http://[::1]:11434", ("::", 11434)),
        ("::1", "http://[::1]:11434", "http://[::1]:11434", ("::1", 11434)),
        ("[::1]:1337", "http://[::1]:1337", "http://[::1]:1337", ("::1", 1337)),
        ("[::]:1234", "http://[::]:1234", "http://[::1]:1234", ("::", 1234)),
        (" 1.2.3.4 ", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        ('"1.2.3.4"', "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        (' " 1.2.3.4 " ', "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        ("'1.2.3.4'", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        ("http://1.2.3.4", "http://1.2.3.4:80", "http://1.2.3.4:80", ("1.2.3.4", 80)),
        ("http://1.2.3.4:4321", "http://1.2.3.4:4321", "http://1.2.3.4:4321", ("1.2.3.4", 4321)),
        ("https://1.2.3.4", "https://1.2.3.4:443", "https://1.2.3.4:443", ("1.2.3.4", 443)),
        ("https://1.2.3.4:4321", "https://1.2.3.4:4321", "https://1.2.3.4:4321", ("1.2.3.4", 4321)),
        ("https://example.com/ollama", "https://example.com:443/ollama", "https://example.com:443/ollama",
         ("example.com", 443)),
        ("ollama.com", "https://ollama.com:443", "https://ollama.com:443", ("ollama.com", 443)),
        ("0.0.0.0", "http://0.0.0.0:11434", "http://127.0.0.1:11434", ("0.0.0.0", 11434)),
        ("0.0.0.0:1234", "http://0.0.0.0:1234", "http://127.0.0.1:1234", ("0.0.0.0", 1234)),
        ("https://0.0.0.0:4321", "https://0.0.0.0:4321", "https://127.0.0.1:4321", ("0.0.0.0", 4321)),
        # more forms
        ("localhost", "http://localhost:11434", "http://localhost:11434", ("localhost", 11434)),
        ("http://example.com/a/b/", "http://example.com:80/a/b/", "http://example.com:80/a/b",
         ("example.com", 80)),
        ("http://example.com/", "http://example.com:80", "http://example.com:80", ("example.com", 80)),
        ("tcp://1.2.3.4", "tcp://1.2.3.4:11434", "tcp://1.2.3.4:11434", ("1.2.3.4", 11434)),
        ("::ffff:1.2.3.4", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        ("0:0::1", "http://[::1]:11434", "http://[::1]:11434", ("::1", 11434)),
        ("1.2.3.4:abc", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        ("1.2.3.4:", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ("1.2.3.4", 11434)),
        ("1.2.3.4:+80", "http://1.2.3.4:80", "http://1.2.3.4:80", ("1.2.3.4", 80)),
        ("[::1]:8080/prefix", "http://[::1]:8080/prefix", "http://[::1]:8080/prefix", ("::1", 8080)),
    ],
)
def test_host_forms(value, ollama_form, client_url, bind):
    host = cfg(OLLAMA_HOST=value).host
    assert str(host) == ollama_form
    assert host.url == client_url
    assert host.bind == bind


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, "8080", "http://127.0.0.1:8080"),
        ("", "8080", "http://127.0.0.1:8080"),
        ("0.0.0.0", "8080", "http://0.0.0.0:8080"),
        ("[::1]", "8080", "http://[::1]:8080"),
        ("http://example.com", "8080", "http://example.com:8080"),  # no port given: the scheme's 80 yields
        ("0.0.0.0:9000", "8080", "http://0.0.0.0:9000"),  # OLLAMA_HOST's port wins
        (":1234", "8080", "http://:1234"),
        ("https://example.com:8443", "8080", "https://example.com:8443"),
        ("1.2.3.4:99999", "8080", "http://1.2.3.4:8080"),  # an invalid port falls back to OLLAMA_PORT
        ("ollama.com", "8080", "https://ollama.com:443"),
        (None, "0", "http://127.0.0.1:0"),
        (None, " '8080' ", "http://127.0.0.1:8080"),
        (None, "abc", "http://127.0.0.1:11434"),
        (None, "70000", "http://127.0.0.1:11434"),
        (None, "-1", "http://127.0.0.1:11434"),
        (None, "", "http://127.0.0.1:11434"),
    ],
)
def test_ollama_port_fills_in_only_a_missing_port(host, port, expected):
    env = {"OLLAMA_PORT": port} if host is None else {"OLLAMA_HOST": host, "OLLAMA_PORT": port}
    assert str(cfg(**env).host) == expected


def test_invalid_port_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="appliance.envconfig"):
        assert cfg(OLLAMA_HOST="1.2.3.4:99999").host.port == 11434
        assert cfg(OLLAMA_PORT="nope").host.port == 11434
    assert "99999" in caplog.text and "nope" in caplog.text


def test_host_default_matches_unset():
    assert cfg().host == Host() == Host("http", "127.0.0.1", 11434, "")


# --- durations -------------------------------------------------------------------------------------


KEEP_ALIVE_CASES = {
    "": 300.0, "1s": 1.0, "1m": 60.0, "1h": 3600.0, "5m0s": 300.0, "1h2m3s": 3723.0,
    "0": 0.0, "60": 60.0, "120": 120.0, "3600": 3600.0, "-0": 0.0, "-1": INF, "-1m": INF,
    "1.5h": 5400.0, "250ms": 0.25, "+30s": 30.0, "'10m'": 600.0, "-5m": INF,
    # invalid values fall back to the default
    " ": 300.0, "???": 300.0, "1d": 300.0, "1y": 300.0, "1w": 300.0, "m": 300.0, "5 m": 300.0,
}


@pytest.mark.parametrize(("value", "seconds"), KEEP_ALIVE_CASES.items())
def test_keep_alive(value, seconds):
    assert cfg(OLLAMA_KEEP_ALIVE=value).keep_alive_s == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    {
        "": 300.0, "1s": 1.0, "1m": 60.0, "1h": 3600.0, "5m0s": 300.0, "1h2m3s": 3723.0,
        "0": INF, "60": 60.0, "120": 120.0, "3600": 3600.0, "-0": INF, "-1": INF, "-1m": INF,
        " ": 300.0, "???": 300.0, "1d": 300.0, "1y": 300.0, "1w": 300.0,
    }.items(),
)
def test_load_timeout(value, seconds):
    assert cfg(OLLAMA_LOAD_TIMEOUT=value).load_timeout_s == seconds


def test_invalid_duration_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="appliance.envconfig"):
        assert cfg(OLLAMA_KEEP_ALIVE="1d").keep_alive_s == 300.0
    assert "OLLAMA_KEEP_ALIVE" in caplog.text and "'1d'" in caplog.text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0), ("+0", 0.0), ("-0", 0.0), ("0s", 0.0), ("1ns", 1e-9), ("1us", 1e-6), ("1\u00b5s", 1e-6),
        ("1\u03bcs", 1e-6), ("1ms", 0.001), ("1.5s", 1.5), (".5s", 0.5), ("1.s", 1.0), ("2h45m", 9900.0),
        ("1h1m1s1ms", 3661.001), ("-1.5h", -5400.0), ("1.000000001s", 1.000000001),
        ("2562047h", 2562047 * 3600.0),
    ],
)
def test_parse_duration(text, seconds):
    assert envconfig.parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "text", ["", "-", "+", ".", ".s", "1", "s", "1x", "1d", "--1s", "1s-", "1 s", " 1s", "1.2.3s", "3000000h"]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        envconfig.parse_duration(text)


# --- booleans, integers, strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", False), ("true", True), ("false", False), ("1", True), ("0", False), ("t", True), ("F", False),
     ("TRUE", True), ("False", False), ("'1'", True), (" 0 ", False),
     # Ollama counts any other non-empty value as true
     ("random", True), ("something", True), ("yes", True), ("no", True), ("tRuE", True)],
)
def test_bool(value, expected):
    assert cfg(OLLAMA_NOPRUNE=value).noprune is expected
    assert cfg(OLLAMA_SCHED_SPREAD=value).sched_spread is expected


@pytest.mark.parametrize(
    ("field", "variable", "unset", "off"),
    [("flash_attention", "OLLAMA_FLASH_ATTENTION", None, False),
     ("igpu_enable", "OLLAMA_IGPU_ENABLE", None, False),
     ("vulkan", "OLLAMA_VULKAN", True, False),
     ("go_template", "OLLAMA_GO_TEMPLATE", True, False)],
)
def test_bool_with_default(field, variable, unset, off):
    assert getattr(cfg(), field) is unset
    assert getattr(cfg(**{variable: ""}), field) is unset
    assert getattr(cfg(**{variable: "0"}), field) is off
    assert getattr(cfg(**{variable: "1"}), field) is True


def test_junk_bool_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="appliance.envconfig"):
        assert cfg(OLLAMA_NOHISTORY="yes please").nohistory is True
    assert "OLLAMA_NOHISTORY" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("1", 1), ("1337", 1337), ("'7'", 7), (" 8 ", 8), ("18446744073709551615", 2**64 - 1),
     # Go's ParseUint(s, 10, 64) refuses all of these, so the default stays
     ("", 512), ("-1", 512), ("+5", 512), ("0o10", 512), ("0x10", 512), ("1_000", 512), ("1.5", 512),
     ("string", 512), ("\u0663", 512), ("18446744073709551616", 512), ("12abc", 512)],
)
def test_uint(value, expected):
    assert cfg(OLLAMA_MAX_QUEUE=value).max_queue == expected


def test_junk_uint_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="appliance.envconfig"):
        assert cfg(OLLAMA_MAX_QUEUE="lots").max_queue == 512
    assert "OLLAMA_MAX_QUEUE" in caplog.text and "'lots'" in caplog.text


@pytest.mark.parametrize(
    ("variable", "field", "value", "expected"),
    [
        ("OLLAMA_NUM_PARALLEL", "num_parallel", "4", 4),
        ("OLLAMA_NUM_PARALLEL", "num_parallel", "0", 1),
        ("OLLAMA_MAX_LOADED_MODELS", "max_loaded_models", "2", 2),
        ("OLLAMA_MAX_LOADED_MODELS", "max_loaded_models", "x", 0),
        ("OLLAMA_CONTEXT_LENGTH", "context_length", "2048", 2048),
        ("OLLAMA_CONTEXT_LENGTH", "context_length", "", 0),
        ("OLLAMA_GPU_OVERHEAD", "gpu_overhead_bytes", "1073741824", 1 << 30),
        ("OLLAMA_MAX_TRANSFER_STREAMS", "max_transfer_streams", "8", 8),
        ("OLLAMA_MAX_BODY_BYTES", "max_body_bytes", "1048576", 1 << 20),
        ("OLLAMA_MAX_BODY_BYTES", "max_body_bytes", "0", 64 << 20),
        ("OLLAMA_MAX_BODY_BYTES", "max_body_bytes", "64MiB", 64 << 20),
    ],
)
def test_integer_settings(variable, field, value, expected):
    assert getattr(cfg(**{variable: value}), field) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("value", "value"), (" value ", "value"), (" 'value' ", "value"), (' "value" ', "value"),
     (" ' value ' ", " value "), (' " value " ', " value "), ("q8_0", "q8_0")],
)
def test_strings_lose_surrounding_spaces_and_quotes(value, expected):
    assert cfg(OLLAMA_KV_CACHE_TYPE=value).kv_cache_type == expected


@pytest.mark.parametrize(
    ("value", "level", "log_level"),
    [("", 0, logging.INFO), ("false", 0, logging.INFO), ("f", 0, logging.INFO), ("0", 0, logging.INFO),
     ("true", 1, logging.DEBUG), ("t", 1, logging.DEBUG), ("1", 1, logging.DEBUG), ("2", 2, envconfig.TRACE),
     ("3", 3, envconfig.TRACE), ("-1", -1, logging.WARNING), ("-2", -2, logging.ERROR),
     ("junk", 0, logging.INFO)],
)
def test_debug(value, level, log_level):
    config = cfg(OLLAMA_DEBUG=value)
    assert (config.debug, config.log_level) == (level, log_level)


def test_models_dir(tmp_path):
    assert cfg().models_dir == Path("/home/u/.ollama/models")
    assert cfg(OLLAMA_MODELS=str(tmp_path)).models_dir == tmp_path
    assert cfg(OLLAMA_MODELS="~/m").models_dir == Path("/home/u/m")
    assert cfg(OLLAMA_MODELS=" '/srv/models' ").models_dir == Path("/srv/models")
    assert Config().models_dir == Path.home() / ".ollama" / "models"


def test_tmpdir():
    assert cfg().tmpdir is None
    assert cfg(OLLAMA_TMPDIR="/var/tmp/x").tmpdir == Path("/var/tmp/x")
    assert cfg(OLLAMA_TMPDIR="~").tmpdir == Path("/home/u")


def test_gpu_selection_distinguishes_unset_from_empty():
    assert cfg().cuda_visible_devices is None
    assert cfg(CUDA_VISIBLE_DEVICES="").cuda_visible_devices == ""
    assert cfg(CUDA_VISIBLE_DEVICES="0,1").cuda_visible_devices == "0,1"
    config = cfg(HIP_VISIBLE_DEVICES="1", ROCR_VISIBLE_DEVICES="GPU-x", GGML_VK_VISIBLE_DEVICES="0",
                 GPU_DEVICE_ORDINAL="2", HSA_OVERRIDE_GFX_VERSION="10.3.0")
    assert (config.hip_visible_devices, config.rocr_visible_devices, config.ggml_vk_visible_devices,
            config.gpu_device_ordinal, config.hsa_override_gfx_version) == ("1", "GPU-x", "0", "2", "10.3.0")


def test_remotes():
    assert cfg().remotes == ("ollama.com",)
    assert cfg(OLLAMA_REMOTES=" a.example, b.example ").remotes == ("a.example", "b.example")
    assert cfg(OLLAMA_REMOTES=" , ").remotes == ("ollama.com",)


def test_defaults():
    config = cfg()
    assert (config.keep_alive_s, config.load_timeout_s, config.num_parallel, config.max_loaded_models,
            config.max_queue, config.context_length, config.kv_cache_type, config.max_body_bytes,
            config.gpu_overhead_bytes, config.max_transfer_streams) == (
        300.0, 300.0, 1, 0, 512, 0, "", 64 << 20, 0, 4)
    assert config == dataclasses.replace(Config(), models_dir=Path("/home/u/.ollama/models"))


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg().max_queue = 1  # type: ignore[misc]


def test_load_is_cached_until_reset(monkeypatch):
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", "7")
    envconfig.reset()
    try:
        assert envconfig.load() is envconfig.load()
        assert envconfig.load().max_queue == 7
        monkeypatch.setenv("OLLAMA_MAX_QUEUE", "9")
        assert envconfig.load().max_queue == 7
        envconfig.reset()
        assert envconfig.load().max_queue == 9
    finally:
        envconfig.reset()


# --- help listing ------------------------------------------------------------------------------------


def test_describe_lists_every_variable_once_in_serve_order():
    names = [name for name, _ in describe()]
    assert len(names) == len(set(names))
    fields_env = {f.metadata["env"] for f in dataclasses.fields(Config)}
    assert set(names) == fields_env | {"OLLAMA_PORT"}
    assert names[:5] == [
        "OLLAMA_DEBUG", "OLLAMA_HOST", "OLLAMA_PORT", "OLLAMA_CONTEXT_LENGTH", "OLLAMA_KEEP_ALIVE"]
    position = names.index
    assert position("OLLAMA_LOAD_TIMEOUT") < position("OLLAMA_NOHISTORY") < position("CUDA_VISIBLE_DEVICES")
    required = """OLLAMA_MODELS OLLAMA_ORIGINS OLLAMA_NUM_PARALLEL OLLAMA_MAX_LOADED_MODELS OLLAMA_MAX_QUEUE
        OLLAMA_NOPRUNE OLLAMA_FLASH_ATTENTION OLLAMA_KV_CACHE_TYPE OLLAMA_GPU_OVERHEAD OLLAMA_SCHED_SPREAD
        OLLAMA_MULTIUSER_CACHE OLLAMA_LLM_LIBRARY OLLAMA_TMPDIR OLLAMA_REMOTES OLLAMA_NO_CLOUD
        OLLAMA_MAX_BODY_BYTES OLLAMA_NOHISTORY OLLAMA_IGPU_ENABLE OLLAMA_MAX_TRANSFER_STREAMS
        HIP_VISIBLE_DEVICES ROCR_VISIBLE_DEVICES GPU_DEVICE_ORDINAL HSA_OVERRIDE_GFX_VERSION""".split()
    assert set(required) <= set(names)
    assert all(text and len(text) < 80 for _, text in describe())


def test_as_env_map_follows_describe():
    values = cfg(OLLAMA_HOST="0.0.0.0:8080", OLLAMA_KEEP_ALIVE="-1").as_env_map()
    assert list(values) == [name for name, _ in describe()]
    assert values["OLLAMA_HOST"] == "http://0.0.0.0:8080"
    assert values["OLLAMA_PORT"] == "8080"
    assert values["OLLAMA_KEEP_ALIVE"] == "inf"


# --- CORS --------------------------------------------------------------------------------------------

OLLAMA_DEFAULT_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)


@pytest.mark.parametrize(
    ("value", "extra"),
    [("", ()), ("http://10.0.0.1", ("http://10.0.0.1",)),
     ("http://172.16.0.1,https://192.168.0.1", ("http://172.16.0.1", "https://192.168.0.1")),
     (" http://a.example , ,https://b.example,", ("http://a.example", "https://b.example")),
     ("'*'", ("*",))],
)
def test_allowed_origins(value, extra):
    assert cfg(OLLAMA_ORIGINS=value).allowed_origins == (*extra, *OLLAMA_DEFAULT_ORIGINS)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost", True), ("https://localhost", True), ("http://localhost:3000", True),
        ("https://127.0.0.1:8443", True), ("http://0.0.0.0:1", True), ("HTTP://LOCALHOST:5173", True),
        ("app://obsidian.md", True), ("file://", True), ("tauri://localhost", True),
        ("vscode-webview://abc123", True), ("vscode-file://vscode-app", True),
        ("http://localhost.evil.example", False), ("http://localhostevil.example", False),
        ("http://127.0.0.1.nip.io", False), ("https://example.com", False), ("null", False), ("", False),
        ("chrome-extension://abc", False), ("http://[::1]:3000", False),
    ],
)
def test_origin_allowed_by_default(origin, allowed):
    assert origin_allowed(origin, cfg().allowed_origins) is allowed


@pytest.mark.parametrize(
    ("patterns", "origin", "allowed"),
    [
        (["*"], "https://anything.example", True),
        (["https://*.example.com"], "https://app.example.com", True),
        (["https://*.example.com"], "https://example.com", False),
        (["https://*.example.com"], "http://app.example.com", False),
        (["http://10.0.0.1"], "http://10.0.0.1", True),
        (["http://10.0.0.1"], "http://10.0.0.1:80", False),
        (["http://*.corp:*"], "http://a.corp:8080", True),
        (["http://*.corp:*"], "http://a.corp", False),
        (["chrome-extension://*"], "chrome-extension://abcdef", True),
        ([" https://b.example "], "https://b.example", True),
        (["https://a.example/*"], "https://a.example.evil", False),
        ([], "http://localhost", False),
    ],
)
def test_origin_patterns(patterns, origin, allowed):
    assert origin_allowed(origin, patterns) is allowed


# --- DNS-rebinding defence ------------------------------------------------------------------------------


@pytest.fixture
def fake_dns(monkeypatch):
    answers = {"box.lan": "127.0.1.1", "public.example": "93.184.216.34"}

    def getaddrinfo(host, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror("unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    envconfig.reset()
    yield
    envconfig.reset()


@pytest.mark.parametrize(
    ("value", "loopback"),
    [("", True), ("127.0.0.1", True), ("127.0.0.5:8080", True), ("[::1]:1234", True), ("::1", True),
     ("localhost", True), ("api.localhost", True), ("box.lan", True), ("::ffff:127.0.0.1", True),
     ("0.0.0.0", False), (":11434", False), ("[::]", False), ("192.168.1.5", False),
     ("public.example", False), ("nowhere.invalid", False), ("http://10.0.0.1:80", False)],
)
def test_is_loopback_bind(fake_dns, value, loopback):
    assert is_loopback_bind(cfg(OLLAMA_HOST=value)) is loopback


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("localhost", True), ("localhost:11434", True), ("LOCALHOST:11434", True), ("localhost.", True),
        ("", True), ("127.0.0.1", True), ("127.0.0.1:11434", True), ("127.9.9.9:1", True),
        ("[::1]:11434", True), ("[::1]", True), ("::1", True), ("[::ffff:127.0.0.1]:80", True),
        ("0.0.0.0:11434", True), ("[::]:11434", True),
        ("10.1.2.3", True), ("172.16.0.1:11434", True), ("192.168.1.5:80", True), ("[fd00::1]:80", True),
        ("203.0.113.7:11434", True),  # one of this machine's addresses
        ("mybox", True), ("MyBox:11434", True), ("app.localhost", True), ("printer.local:631", True),
        ("host.docker.internal:11434", True),
        ("172.32.0.1", False), ("8.8.8.8:11434", False), ("[2001:db8::1]:80", False),
        ("example.com", False), ("evil.example:11434", False), ("localhost.evil.example", False),
        ("mybox.evil.example", False), ("127.0.0.1.nip.io", False), ("local", False), ("internal:80", False),
    ],
)
def test_host_header_on_loopback_bind(header, allowed):
    config = cfg()
    local = {ipaddress.ip_address("203.0.113.7")}
    assert host_header_allowed(header, config, hostname="MyBox", local_ips=local) is allowed


@pytest.mark.parametrize("value", ["0.0.0.0", ":11434", "192.168.1.5:11434", "[::]"])
def test_any_host_header_when_not_bound_to_loopback(value):
    assert host_header_allowed("evil.example", cfg(OLLAMA_HOST=value), hostname="mybox", local_ips=())


def test_host_header_defaults_to_this_machine():
    config = cfg()
    assert host_header_allowed(f"{socket.gethostname()}:11434", config)
    assert not host_header_allowed("evil.example", config)
    assert isinstance(envconfig._local_ips(), frozenset)
