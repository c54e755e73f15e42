import pytest

from appliance.errors import InvalidName
from appliance.store.names import Name, name_from_manifest_path, parse_name


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("smollm2", ("registry.ollama.ai", "library", "smollm2", "latest")),
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
        ("me/model:v1", ("registry.ollama.ai", "me", "model", "v1")),
        ("example.com/me/model:v1", ("example.com", "me", "model", "v1")),
        ("localhost:5000/me/model", ("localhost:5000", "me", "model", "latest")),
        ("http://localhost:5000/me/model:x", ("localhost:5000", "me", "model", "x")),
        ("llama3.2:3b-instruct-q4_K_M", ("registry.ollama.ai", "library", "llama3.2", "3b-instruct-q4_K_M")),
    ],
)
def test_parse_fills_defaults(text, parts):
    assert parse_name(text).parts() == parts


def test_scheme_is_kept_for_registry_access():
    assert Name.parse("http://localhost:5000/me/m").scheme == "http"
    assert Name.parse("me/m").scheme == "https"


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", "..", "../x", "a/../b", "/abs/path", "model:", ":tag", "a//b", "model:ta/g",
        "x" * 81, "m:" + "t" * 81, "-lead", "me.dot/model", "mo del", "m\x00", "m:tag:more/x",
        "a/b/c/d", "a/b:c/d", "ünïcode",
    ],
)
def test_invalid_names_are_refused(text):
    with pytest.raises(InvalidName):
        parse_name(text)


def test_long_parts_at_the_limit_are_accepted():
    assert parse_name("m" * 80 + ":" + "t" * 80).model == "m" * 80
    assert parse_name("h" * 255 + "/" + "n" * 80 + "/m").host == "h" * 255


@pytest.mark.parametrize("host", ["h" * 256, "h" * 350, ("a" * 63 + ".") * 4 + "com", "h" * 300 + ":5000"])
def test_a_host_that_cannot_be_a_file_name_is_refused(host):
    # Failure #9: Ollama takes a host of up to 350 characters, but each part is a folder under
    # manifests/, and a file name holds 255 bytes; the store answered 500 with its own path.
    with pytest.raises(InvalidName) as info:
        parse_name(f"{host}/library/m:latest")
    assert info.value.status == 400
    assert not Name.parse(f"{host}/library/m").is_valid


def test_names_compare_case_insensitively():
    assert parse_name("SmolLM2:135M").same_as(parse_name("smollm2:135m"))
    assert not parse_name("smollm2:135m").same_as(parse_name("smollm2:360m"))


@pytest.mark.parametrize(
    ("text", "shortest"),
    [
        ("smollm2", "smollm2:latest"),
        ("me/m:t", "me/m:t"),
        ("example.com/library/m:t", "example.com/library/m:t"),
        ("REGISTRY.OLLAMA.AI/LIBRARY/m:t", "m:t"),
    ],
)
def test_display_is_the_shortest_name(text, shortest):
    assert parse_name(text).display == shortest


def test_name_from_manifest_path():
    assert name_from_manifest_path(("registry.ollama.ai", "library", "m", "t")) == Name(
        "registry.ollama.ai", "library", "m", "t", "https")
    assert name_from_manifest_path(("a", "b", "c")) is None
    assert name_from_manifest_path(("a", "..", "c", "d")) is None
