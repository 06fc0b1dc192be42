"""The one door to subprocesses: what its --debug log shows."""

from __future__ import annotations

import logging

import pytest

from cos import run


def test_secret_arguments_are_masked_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="cos.run"):
        res = run.run(["echo", "--password=s3cret", "pw2", "a b"], secret_args=frozenset({1, 2}))
    assert res.stdout == "--password=s3cret pw2 a b\n"
    assert "$ echo --password=*** *** 'a b'" in caplog.text
    assert "s3cret" not in caplog.text and "pw2" not in caplog.text


def test_shown_quotes_what_is_not_secret() -> None:
    assert run.shown(["ls", "-l", "my dir"]) == "ls -l 'my dir'"
