"""The admin password (Argon2id through PyNaCl), its sessions and CSRF tokens, and the limits on attempts."""

import os
import stat

import pytest

from edge.status import admin as adm


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def test_the_password_is_kept_as_a_slow_hash_readable_by_the_owner_alone(tmp_path):
    adm.set_password(str(tmp_path), "correct horse")
    path = adm.password_path(str(tmp_path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = adm.read_hash(str(tmp_path))
    assert stored.startswith(b"$argon2id$v=19$m=65536,t=3,p=1$")     # the parameters sized for a Pi
    assert b"correct horse" not in open(path, "rb").read()
    assert adm.check_password(stored, "correct horse")
    assert not adm.check_password(stored, "correct hors")
    assert not adm.check_password(stored, "x" * (adm.MAX_PASSWORD + 1))
    with pytest.raises(adm.AdminError, match="at least 8"):
        adm.set_password(str(tmp_path), "short")
    assert adm.remove_password(str(tmp_path)) and adm.read_hash(str(tmp_path)) is None
    assert not adm.remove_password(str(tmp_path))


def test_each_wrong_password_doubles_the_wait_of_that_client_only():
    clock = Clock()
    attempts = adm.Attempts(clock)
    assert attempts.wait("10.0.0.2") == 0
    waits = [attempts.failed("10.0.0.2") for _ in range(4)]
    assert waits == [1, 2, 4, 8]
    assert attempts.wait("10.0.0.2") == 8 and attempts.wait("10.0.0.3") == 0
    clock.t += 8
    assert attempts.wait("10.0.0.2") == 0
    for _ in range(20):
        attempts.failed("10.0.0.4")
    assert attempts.clients["10.0.0.4"][1] - clock.t == adm.MAX_WAIT   # capped
    attempts.succeeded("10.0.0.2")
    assert "10.0.0.2" not in attempts.clients


def test_wrong_passwords_from_many_addresses_stop_everyone_for_the_minute():
    clock = Clock()
    attempts = adm.Attempts(clock)
    for i in range(adm.GLOBAL_FAILURES):
        attempts.failed(f"10.0.1.{i}")
        clock.t += 1
    assert attempts.wait("10.0.9.9") == pytest.approx(60 - adm.GLOBAL_FAILURES)   # a fresh address waits too
    clock.t += 60
    assert attempts.wait("10.0.9.9") == 0


def test_the_clients_remembered_are_bounded():
    attempts = adm.Attempts(Clock())
    for i in range(adm.MAX_CLIENTS + 10):
        attempts.clients[f"c{i}"] = (1, 0.0)
    attempts.failed("last")
    assert len(attempts.clients) == adm.MAX_CLIENTS and "c0" not in attempts.clients


def test_a_change_needs_the_session_and_the_csrf_token_bound_to_it():
    clock = Clock()
    sessions = adm.Sessions(clock)
    token, csrf = sessions.open(b"$argon2id$one")
    other_token, other_csrf = sessions.open(b"$argon2id$one")
    assert sessions.valid(token, csrf, b"$argon2id$one")
    assert not sessions.valid(token, other_csrf, b"$argon2id$one")       # another session's token
    assert not sessions.valid(token, None, b"$argon2id$one")
    assert not sessions.valid("forged", csrf, b"$argon2id$one")
    assert not sessions.valid(None, csrf, b"$argon2id$one")
    assert not sessions.valid(token, csrf, b"$argon2id$two")              # the password changed: logged out
    assert not sessions.valid(token, csrf, b"$argon2id$one")
    assert sessions.valid(other_token, other_csrf, b"$argon2id$one")
    clock.t += adm.SESSION_SECONDS + 1
    assert not sessions.valid(other_token, other_csrf, b"$argon2id$one")  # expired
    for _ in range(adm.MAX_SESSIONS + 5):
        sessions.open(b"$argon2id$one")
    assert len(sessions._by_token) == adm.MAX_SESSIONS


def test_the_session_cookie_is_http_only_and_strict():
    cookie = adm.session_cookie("abc")
    assert cookie.startswith("hearth_admin=abc;") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert adm.cookie_of({"cookie": "x=1; hearth_admin=abc; y=2"}) == "abc"
    assert adm.cookie_of({"cookie": "hearth_adminx=abc"}) is None and adm.cookie_of({}) is None
