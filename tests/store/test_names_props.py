"""Properties of model-name parsing (appliance.store.names), over generated names and arbitrary text.

Whatever the text, parsing ends in a Name or InvalidName; a valid name's parts are safe path
components; and a valid name survives the trip through its display form and its full form.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.errors import InvalidName
from appliance.store.names import MAX_PATH_COMPONENT, Name, name_from_manifest_path, parse_name

SETTINGS = settings(max_examples=300, deadline=None)

ALNUM_ = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


def part(rest: str, max_size: int) -> st.SearchStrategy[str]:
    """One name part: an alphanumeric or ``_`` first, then ``rest`` characters too."""
    return st.builds(lambda a, b: a + b, st.sampled_from(ALNUM_),
                     st.text(ALNUM_ + rest, max_size=max_size - 1))


hosts = part("-.:", 60) | part("-.", MAX_PATH_COMPONENT)
namespaces = part("-", 80)
models = part("-.", 80)
tags = part("-.", 80)

# Text near the grammar: its separators and alphabet, plus anything at all.
name_like = st.text(ALNUM_[:6] + "_-.:/@+ \x00é%", max_size=40) | st.text(max_size=40)


def resolve(text: str) -> Name | None:
    """The name, or None when it is refused with InvalidName (any other exception fails the test)."""
    try:
        return parse_name(text)
    except InvalidName:
        return None


@SETTINGS
@given(name_like)
@example("http://m")
@example("ftp://host/ns/m")
@example("h" * 256 + "/ns/m")
@example("a/../b")
def test_any_text_parses_or_is_refused_as_invalid(text: str) -> None:
    name = resolve(text)
    Name.parse(text)  # the bare split never raises
    if name is None:
        return
    assert name.is_valid
    for component in name.parts():
        assert 0 < len(component.encode()) <= MAX_PATH_COMPONENT
        assert "/" not in component and "\x00" not in component and component not in (".", "..")


@SETTINGS
@given(hosts, namespaces, models, tags)
def test_generated_names_parse_to_their_parts(host: str, namespace: str, model: str, tag: str) -> None:
    name = parse_name(f"{host}/{namespace}/{model}:{tag}")
    assert name.parts() == (host, namespace, model, tag)


@SETTINGS
@given(st.one_of(
    st.builds(lambda h, n, m, t: f"{h}/{n}/{m}:{t}", hosts, namespaces, models, tags),
    st.builds(lambda n, m: f"{n}/{m}", namespaces, models),
    st.builds(lambda m, t: f"{m}:{t}", models, tags),
    models,
    name_like,
))
def test_display_and_full_form_read_back_as_the_same_name(text: str) -> None:
    name = resolve(text)
    if name is None:
        return
    shown = parse_name(name.display)
    assert shown.same_as(name)
    assert shown.display == name.display
    assert parse_name(str(name)).parts() == name.parts()
    if "://" not in text:  # names compare case-insensitively; a scheme is not part of the name
        assert parse_name(text.upper()).same_as(name)


@SETTINGS
@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_a_name_from_a_manifest_path_is_valid_or_none(host: str, namespace: str, model: str, tag: str) -> None:
    name = name_from_manifest_path((host, namespace, model, tag))
    assert name is None or name.parts() == (host, namespace, model, tag)
