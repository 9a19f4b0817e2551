"""Broker credentials handed out with enrollment: each node's own password in the claim's answer, the same on
renewal, and a mosquitto password file that admits exactly the enrolled nodes that are not revoked."""

import base64
import hashlib
import os
import urllib.parse

import pytest

from edge.fleet.brokerauth import BrokerCredentials, mosquitto_line
from edge.fleet.certificates import sign_delegation
from edge.fleet.claims import Claims, Issuer
from edge.fleet.mqtt import BrokerError, connect, parse_broker
from edge.fleet.requests import claim_request, new_token, renewal_request
from edge.identity import Identity
from tests.fleet.broker import Mosquitto, free_port


def test_the_password_file_is_mosquittos_format():
    line = mosquitto_line("alice", "secret", salt=b"0123456789ab")
    user, _, rest = line.partition(":")
    _, kind, rounds, salt, digest = rest.split("$")
    assert (user, kind, rounds, base64.b64decode(salt)) == ("alice", "7", "101", b"0123456789ab")
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"secret", b"0123456789ab", 101, 64)


@pytest.mark.trio
async def test_enrolled_nodes_get_their_own_broker_password(tmp_path):
    fleet, enroll = Identity.generate(), Identity.generate()
    tokens = {"shop-1": new_token(), "shop-2": new_token()}
    path = str(tmp_path / "claims.json")
    Claims.create(path, fleet.node_id, tokens)
    port = free_port()
    credentials = BrokerCredentials(f"mqtt://127.0.0.1:{port}", str(tmp_path))
    claims = Claims(path, Issuer(enroll, sign_delegation(fleet, enroll.node_id, 365), fleet.node_id),
                    broker=credentials)
    a, b = Identity.generate(), Identity.generate()
    url_a = claims.answer(claim_request(a, tokens["shop-1"], fleet.node_id))["broker"]
    answer_b = claims.answer(claim_request(b, tokens["shop-2"], fleet.node_id))
    parts = urllib.parse.urlsplit(url_a)
    assert parts.username == a.node_id and len(parts.password) == 43 and parts.port == port
    cert = base64.b64decode(claims.answer(claim_request(a, tokens["shop-1"], fleet.node_id))["certificate"])
    assert claims.renew(renewal_request(a, cert, fleet.node_id))["broker"] == url_a   # the same password again
    assert oct(os.stat(credentials.passwd).st_mode & 0o777) == "0o600"
    assert open(credentials.passwd).read().count("$7$") == 2
    Claims(path, fleet=fleet.node_id).revoke("shop-2")
    assert claims.write_broker_passwords() == 1
    broker = Mosquitto(port, passwords=credentials.passwd)
    try:
        async with connect(parse_broker(url_a), a.node_id):
            pass
        for refused in (answer_b["broker"], url_a.replace(parts.password, "x" * 43), f"mqtt://127.0.0.1:{port}"):
            with pytest.raises(BrokerError, match="refused"):
                async with connect(parse_broker(refused), "someone"):
                    pass
    finally:
        broker.close()
