"""Image paths in a prompt, on real files: which stretches are paths, how they are read and removed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from appliance.cli.attachments import ImageFileError, candidate_paths, content_type, extract_images
from tests.fixtures.vision_images import png

WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(24)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32) + b"\xff\xd9"


def test_candidates_are_found_as_ollama_finds_them():
    # Ollama's own cases (cmd/interactive_test.go): escaped and plain spaces, any case of the extension
    text = (" some preamble \n ./relative\\ path/one.png inbetween1 ./not a valid two.jpg inbetween2 ./1.svg\n"
            "/unescaped space /three.jpeg inbetween3 /valid\\ path/dir/four.png \"./quoted with spaces/five.JPG\n"
            "/unescaped space /six.webp inbetween6 /valid\\ path/dir/seven.WEBP")
    found = candidate_paths(text)
    names = ["one.png", "two.jpg", "three.jpeg", "four.png", "five.JPG", "six.webp", "seven.WEBP"]
    assert len(found) == len(names)
    for path, name in zip(found, names, strict=True):
        assert path.endswith(name) and '"' not in path and "inbetween" not in path
    assert candidate_paths("see ./a.pngx or ./b.gif") == candidate_paths("see c.png (no slash)") == []


def test_content_types_are_named_as_go_names_them():
    assert content_type(png(1)) == "image/png"
    assert content_type(JPEG) == "image/jpeg"
    assert content_type(WEBP) == "image/webp"
    assert content_type(b"GIF89a....") == "image/gif"
    assert content_type(b"just some notes\n") == "text/plain; charset=utf-8"
    assert content_type(b"\x00\x01\x02binary") == "application/octet-stream"


def test_images_are_read_and_their_paths_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my pics").mkdir()
    (tmp_path / "my pics" / "a cat.png").write_bytes(png(1))
    (tmp_path / "b.jpg").write_bytes(JPEG)
    (tmp_path / "c.webp").write_bytes(WEBP)
    log = io.StringIO()
    text = (f"Compare {tmp_path}/my\\ pics/a\\ cat.png with '{tmp_path}/b.jpg' and ~/c.webp, "
            "not ~/missing.png.")
    prompt, images = extract_images(text, log)
    assert prompt == "Compare  with  and , not ~/missing.png."
    assert images == [png(1), JPEG, WEBP]
    assert log.getvalue() == (f"Added image '{tmp_path}/my pics/a cat.png'\nAdded image '{tmp_path}/b.jpg'\n"
                              f"Added image '{tmp_path}/c.webp'\n")


def test_a_path_after_a_slash_in_the_text_is_still_found(tmp_path: Path):
    (tmp_path / "cat.png").write_bytes(png(2))
    # The lazy pattern first proposes "/dog? <tmp>/cat.png", which names no file; Ollama would stop there.
    prompt, images = extract_images(f"Is it a cat/dog? {tmp_path}/cat.png", io.StringIO())
    assert (prompt, images) == ("Is it a cat/dog?", [png(2)])


def test_a_path_that_names_no_file_stays_text(tmp_path: Path):
    text = f"What is in {tmp_path}/nothing-here.png and /etc/hostname/x.jpg?"
    assert extract_images(text, io.StringIO()) == (text, [])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.png", b"these are my notes\n", "invalid file type: text/plain; charset=utf-8"),
    ("anim.png", b"GIF89a" + bytes(20), "invalid file type: image/gif"),
    ("empty.png", b"", "the file is empty"),
    ("folder.png", None, "is a directory"),
])
def test_a_file_that_is_no_image_is_an_error(tmp_path: Path, name: str, content: bytes | None, message: str):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    log = io.StringIO()
    with pytest.raises(ImageFileError, match=message) as raised:
        extract_images(f"Describe {path}", log)
    assert str(path) in str(raised.value) and log.getvalue() == ""
