"""Hostile node ids, shared by the network attack tests (test_network_discovery.py, test_held.py) and the hostile LAN
hosts that test_mdns_attacks.py runs as scripts in a namespace (mdns_attacker.py, mdns_fuzzer.py import this
module from their own folder)."""

import os

import nacl.bindings

from edge.identity import node_id_of, public_key_of

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def bad_point_id() -> str:
    """A node id of the right shape (canonical base32) whose key is not a valid Ed25519 point."""
    while True:
        key = os.urandom(32)
        try:
            nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key)
        except Exception:   # noqa: BLE001 - libsodium refuses it: what we are looking for
            return node_id_of(key)


def padding_alias(node_id: str) -> str:
    """The same key with the last character's 4 unused bits set: another text base32 decodes to the same key."""
    i = ALPHABET.index(node_id[-1])
    return node_id[:-1] + ALPHABET[(i & 0x10) | (i & 0x0f ^ 0x0f or 1)]


def sign_alias(node_id: str) -> str:
    """The other text naming the same CURVE key: the Ed25519 key with its sign bit flipped."""
    key = bytearray(public_key_of(node_id))
    key[31] ^= 0x80
    return node_id_of(bytes(key))
