"""The node key as root reads and writes it in the service user's data directory (first boot, the enrollment
claim): through a descriptor of the directory, following no link. The file's format is the one Identity.save
writes and Identity.load reads: the key's 32-byte seed in hex."""

from edge.atomic import read_regular, write_atomic
from edge.identity import KEY_FILE, Identity, IdentityError


def load_identity(data: int, where: str) -> Identity | None:
    """The node key in the data directory `data` (a descriptor), or None if there is none."""
    text = read_regular(KEY_FILE, data)
    if text is None:
        return None
    try:
        return Identity.from_seed(bytes.fromhex(text.decode().strip()))
    except (ValueError, UnicodeDecodeError):
        raise IdentityError(f"{where} holds no node key; move it away to make a new identity") from None


def save_identity(data: int, identity: Identity) -> None:
    write_atomic(KEY_FILE, (bytes(identity.signing_key).hex() + "\n").encode(), 0o600, dir_fd=data)
