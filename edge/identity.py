"""The node's identity: one Ed25519 key (PyNaCl). The node id is derived from its public key; the CURVE keys
ZeroMQ encrypts with are the same key converted to X25519, so a peer's transport key proves its node id.

Node id: "hn" + base32 (lower case, no padding) of the 32-byte Ed25519 public key. Key file: the 32-byte
seed, hex, readable only by its owner.
"""

import base64
import os
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.signing

from edge.atomic import write_atomic
from edge.errors import DecodeError, EdgeError

NODE_ID_PREFIX = "hn"
KEY_FILE = "identity.key"


class IdentityError(EdgeError):
    """The identity key is missing, unreadable or too widely readable."""


def node_id_of(public_key: bytes) -> str:
    return NODE_ID_PREFIX + base64.b32encode(public_key).decode().rstrip("=").lower()


def public_key_of(node_id: str) -> bytes:
    """The Ed25519 public key a node id names; DecodeError if it is not a node id."""
    if not isinstance(node_id, str) or not node_id.startswith(NODE_ID_PREFIX) or len(node_id) != 54:
        raise DecodeError(f"{node_id!r} is not a node id (hn followed by 52 base32 characters)")
    body = node_id[2:]
    if body != body.lower():
        raise DecodeError(f"node id {node_id!r} must be lower case")
    try:
        key = base64.b32decode(body.upper() + "====")
    except ValueError:
        raise DecodeError(f"node id {node_id!r} is not valid base32") from None
    if node_id_of(key) != node_id:
        # 52 base32 characters carry 260 bits for a 256-bit key: the last one's low 4 bits must be 0, or 16
        # texts would name one key
        raise DecodeError(f"node id {node_id!r} is not in its canonical form (its last character's spare bits "
                          f"are set)")
    return key


def curve_public_of(node_id: str) -> bytes:
    """The X25519 (CURVE) public key of a node id: what its ZeroMQ handshake must present."""
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key_of(node_id))
    except nacl.exceptions.RuntimeError:
        raise DecodeError(f"node id {node_id!r} is not a valid Ed25519 point") from None


def check_node_id(node_id) -> bytes:
    """The CURVE key of a node id from outside (an announcement, a Hello, a certificate), after checking all
    of it: hn + 52 lower-case base32 characters in canonical form, naming a valid Ed25519 point of the main
    subgroup. DecodeError saying which otherwise.

    Two ids can still name one CURVE key (an Ed25519 key and its negation convert to the same X25519 key), so
    whoever must tell nodes apart compares what this returns, never the texts."""
    return curve_public_of(node_id)


def verify(node_id: str, message: bytes, signature: bytes) -> bool:
    """True when signature is node_id's signature of message."""
    try:
        nacl.signing.VerifyKey(public_key_of(node_id)).verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError,
            DecodeError):
        return False


@dataclass(frozen=True)
class Identity:
    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> "Identity":
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    @property
    def curve_secret(self) -> bytes:
        return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(bytes(self.signing_key) + self.public_key)

    @property
    def curve_public(self) -> bytes:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def save(self, path: str) -> None:
        """Write the key readable by its owner only (created 0600, fsynced, renamed into place)."""
        write_atomic(path, bytes(self.signing_key).hex().encode() + b"\n", 0o600)

    @classmethod
    def load(cls, path: str) -> "Identity":
        """Read a key file; IdentityError if it is missing, malformed, or readable by others."""
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                text = f.read().strip()
        except FileNotFoundError:
            raise IdentityError(f"no identity at {path}; create one with `hearth init`") from None
        except OSError as exc:
            raise IdentityError(f"cannot read the identity {path}: {exc.strerror}") from None
        if st.st_mode & 0o077:
            raise IdentityError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); the node's secret "
                                f"key must be private: chmod 600 {path}")
        try:
            seed = bytes.fromhex(text.decode())
        except (ValueError, UnicodeDecodeError):
            seed = b""
        if len(seed) != 32:
            raise IdentityError(f"{path} is not a Hearth identity (64 hex digits expected)")
        return cls.from_seed(seed)
