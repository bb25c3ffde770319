"""Assertions on CliRunner results."""

from __future__ import annotations


def assert_user_error(result, *fragments: str, one_sentence: bool = False) -> None:
    """A CLI user error: exit 2, no traceback, stderr opening with `error:` and holding every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    message = " ".join(result.stderr.split())
    if one_sentence:
        assert message.count(". ") == 0, message
    for fragment in fragments:
        assert fragment in message, message
