"""The exception root. Subclasses are grouped by what the caller can do about them."""


class EdgeError(Exception):
    """Base of every error Hearth raises on purpose."""


class NativeMissing(EdgeError, ImportError):
    """A native kernel is not built and REQUIRE_NATIVE=1 forbids falling back to the reference."""


class DecodeError(EdgeError, ValueError):
    """Bytes or text from outside (a file, a peer, a user) are not what the format allows; the message says why."""
