"""Identity: node ids, signatures, CURVE keys derived from the Ed25519 key, fleet certificates."""

import nacl.public
import pytest

from edge.errors import DecodeError
from edge.fleet.certificates import CertificateError, check_certificate, sign_certificate
from edge.identity import Identity, curve_public_of, public_key_of, verify


def test_node_id_curve_keys_and_signatures():
    me = Identity.from_seed(bytes(range(32)))
    assert me.node_id.startswith("hn") and len(me.node_id) == 54
    assert public_key_of(me.node_id) == me.public_key
    assert curve_public_of(me.node_id) == me.curve_public
    assert bytes(nacl.public.PrivateKey(me.curve_secret).public_key) == me.curve_public
    sig = me.sign(b"receipt")
    assert verify(me.node_id, b"receipt", sig) and not verify(me.node_id, b"receipt!", sig)
    assert not verify(Identity.generate().node_id, b"receipt", sig)


@pytest.mark.parametrize("bad", ["", "hn", "xx" + "a" * 52, "hn" + "A" * 52, "hn" + "1" * 52])
def test_bad_node_ids(bad):
    with pytest.raises(DecodeError):
        curve_public_of(bad)


def test_certificates():
    fleet, node, other = Identity.generate(), Identity.generate(), Identity.generate()
    cert = sign_certificate(fleet, node.node_id, valid_days=1)
    check_certificate(cert, fleet.public_key, node.node_id)
    with pytest.raises(CertificateError, match="not " + other.node_id):
        check_certificate(cert, fleet.public_key, other.node_id)
    with pytest.raises(CertificateError, match="another fleet"):
        check_certificate(cert, other.public_key, node.node_id)
    with pytest.raises(CertificateError, match="expired"):
        check_certificate(cert, fleet.public_key, node.node_id, now=2e10)
    tampered = bytearray(cert)
    tampered[-5] ^= 1
    with pytest.raises(CertificateError):
        check_certificate(bytes(tampered), fleet.public_key, node.node_id)
    with pytest.raises(CertificateError, match="missing"):
        check_certificate(b"", fleet.public_key, node.node_id)
