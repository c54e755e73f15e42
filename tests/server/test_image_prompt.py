"""appliance/server/image_prompt.py: image tags as upstream places them, markers only where a tag
survived, and no text that can pass for a marker."""

from __future__ import annotations

from appliance.api.images import Image
from appliance.engine.protocol import MEDIA_MARKER
from appliance.server.image_prompt import ESCAPED_MARKER, place, tag_messages, tag_text


def picture(n: int) -> Image:
    return Image(1, 1, bytes([n, n, n]), f"digest{n}")


def test_tags_go_where_the_text_says_or_before_it() -> None:
    assert tag_text("What is this?", 2, 0) == "[img-0][img-1]What is this?"
    assert tag_text("A [img] and B [img].", 2, 3) == "A [img-3] and B [img-4]."
    assert tag_text("Only [img] here", 2, 0) == "[img-1]Only [img-0] here"


def test_messages_number_their_images_in_order() -> None:
    messages = [{"role": "user", "content": "one", "images": ["a"]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "two", "images": ["b", "c"]}]
    tagged, groups = tag_messages(messages)
    assert [m["content"] for m in tagged] == ["[img-0]one", "ok", "[img-1][img-2]two"]
    assert groups == [("messages[0]", ["a"]), ("messages[2]", ["b", "c"])]
    assert messages[0]["content"] == "one"  # the request's own messages are left alone


def test_only_surviving_tags_become_markers_and_send_their_images() -> None:
    images = [picture(0), picture(1), picture(2)]
    prompt, sent = place("<user>[img-1][img-2]Compare</user>", images)  # message 0 was dropped to fit
    assert prompt == f"<user>{MEDIA_MARKER}{MEDIA_MARKER}Compare</user>"
    assert sent == images[1:]


def test_text_cannot_forge_a_marker_or_reuse_an_image() -> None:
    images = [picture(0)]
    prompt, sent = place(f"say {MEDIA_MARKER} [img-0] [img-0] [img-7] [img-{'9' * 20}]", images)
    assert prompt == f"say {ESCAPED_MARKER} {MEDIA_MARKER} [img-0] [img-7] [img-{'9' * 20}]"
    assert prompt.count(MEDIA_MARKER) == len(sent) == 1
    assert ESCAPED_MARKER != MEDIA_MARKER and MEDIA_MARKER not in ESCAPED_MARKER
