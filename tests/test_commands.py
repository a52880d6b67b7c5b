"""The comment grammar, by example and by property: quoted or fenced commands never count."""
from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from forge_bridge.intake.commands import Command, NoCommand, Reply, Verb, mentions, parse_comment


def parse(text: str):
    return parse_comment(text, command="/kugetsu", bot_login="kugetsu-bot")


@pytest.mark.parametrize(("text", "expected"), [
    ("/kugetsu start", Command(Verb.START)),
    ("/kugetsu start use the new API\nand add tests", Command(Verb.START, message="use the new API\nand add tests")),
    ("Thanks!\n/kugetsu continue fix the lint", Command(Verb.CONTINUE, message="fix the lint")),
    ("@kugetsu-bot please rename it", Command(Verb.CONTINUE, message="please rename it", mention=True)),
    ("@Kugetsu-Bot, rename it", Command(Verb.CONTINUE, message="rename it", mention=True)),
    ("/kugetsu stop", Command(Verb.STOP)),
    ("/kugetsu retry", Command(Verb.RETRY)),
    ("/kugetsu status", Command(Verb.STATUS)),
    ("/kugetsu destroy", Command(Verb.DESTROY)),
    ("/kugetsu destroy --force", Command(Verb.DESTROY, force=True)),
    ("  /kugetsu STOP  ", Command(Verb.STOP)),
])
def test_commands(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("text", [
    "> /kugetsu start", "```\n/kugetsu start\n```", "~~~sh\n/kugetsu stop\n~~~", "<!-- /kugetsu start -->",
    "please run /kugetsu start", "/kugetsustart", "hello @kugetsu-bot do it", "", "/other start",
    "<!--\n/kugetsu start\n-->", "````\n```\n/kugetsu start\n```\n````",
])
def test_not_commands(text):
    assert parse(text) == NoCommand()


def test_code_after_a_fence_closes_is_read_again():
    assert parse("```\n/kugetsu stop\n```\n/kugetsu status") == Command(Verb.STATUS)


def test_help_and_unknown_verbs_answer_with_the_grammar():
    for text in ("/kugetsu help", "/kugetsu", "@kugetsu-bot"):
        reply = parse(text)
        assert isinstance(reply, Reply) and "/kugetsu continue <message>" in reply.text
    unknown = parse("/kugetsu stpo")
    assert isinstance(unknown, Reply) and "Did you mean `/kugetsu stop`?" in unknown.text
    assert "Did you mean" not in parse("/kugetsu frobnicate").text


def test_mistakes_are_explained():
    assert "needs a message" in parse("/kugetsu continue").text
    assert "--force" in parse("/kugetsu destroy now").text


def test_configured_command_word():
    assert parse_comment("/bot start", command="/bot") == Command(Verb.START)
    assert parse_comment("/kugetsu start", command="/bot") == NoCommand()


def test_shell_metacharacters_are_just_text():
    text = "/kugetsu start $(rm -rf ~); `id` | tee /etc/passwd && echo {prompt}"
    assert parse(text).message == "$(rm -rf ~); `id` | tee /etc/passwd && echo {prompt}"


def test_mentions():
    assert mentions("thanks @kugetsu-bot, one more thing", "kugetsu-bot")
    assert not mentions("> @kugetsu-bot said", "kugetsu-bot")
    assert not mentions("mail me@kugetsu-bot.example", "kugetsu-bot")
    assert not mentions("@kugetsu-bot2 hi", "kugetsu-bot")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_any_text_parses_to_one_of_three_answers(text):
    assert isinstance(parse(text), (Command, Reply, NoCommand))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500), st.sampled_from(["start", "stop", "retry", "status", "continue x"]))
def test_quoted_commands_never_count(prefix, verb):
    quoted = "\n".join("> " + line for line in f"/kugetsu {verb}\n{prefix}".split("\n"))
    fenced = f"```\n/kugetsu {verb}\n```"
    assert parse(quoted) == NoCommand() or "/kugetsu" in prefix or "@kugetsu-bot" in prefix.lower()
    assert parse(fenced) == NoCommand()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=300))
def test_start_message_is_kept_verbatim(message):
    assume("<!--" not in message)  # an unclosed HTML comment hides the rest, as the forge renders it
    parsed = parse(f"/kugetsu start {message}")
    assert isinstance(parsed, Command) and parsed.message == message.strip()
