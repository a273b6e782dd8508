"""Usernames are normalized then validated; passwords have a length window."""

from __future__ import annotations

import pytest

from tradeloom.users.model import (
    InvalidPassword,
    InvalidUsername,
    check_password,
    normalize_username,
)


@pytest.mark.parametrize(
    ("given", "normalized"),
    [("alice", "alice"), ("  Alice ", "alice"), ("a.b-c_9", "a.b-c_9"), ("x" * 32, "x" * 32)],
)
def test_a_username_is_normalized(given: str, normalized: str) -> None:
    assert normalize_username(given) == normalized


@pytest.mark.parametrize("given", ["ab", "x" * 33, "a b", "al!ce", "ålice", "", "a/b", "a:b"])
def test_a_malformed_username_is_refused(given: str) -> None:
    with pytest.raises(InvalidUsername, match="3-32 characters"):
        normalize_username(given)


@pytest.mark.parametrize("given", ["short", "", " " * 12, "x" * 1025])
def test_an_unacceptable_password_is_refused(given: str) -> None:
    with pytest.raises(InvalidPassword):
        check_password(given)


def test_an_acceptable_password_is_kept_as_given() -> None:
    assert check_password(" correct horse ") == " correct horse "
