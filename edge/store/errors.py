"""What can go wrong in the store, grouped by what the caller can do about it."""

from edge.errors import EdgeError


class StoreError(EdgeError):
    """The store cannot do what was asked; the message says why and what to do."""


class BlockNotFound(StoreError, KeyError):
    """This node does not hold the block (fetch it from a neighbour, or add the content)."""

    def __init__(self, message: str, cid=None):
        super().__init__(message)
        self.cid = cid   # the block that is missing, when known

    def __str__(self):
        return str(self.args[0]) if self.args else "block not found"


class CorruptBlock(StoreError):
    """A block on disk does not match its CID: it was quarantined and is not served."""

    def __init__(self, message: str, cid=None):
        super().__init__(message)
        self.cid = cid   # the block, now struck from the catalog: a neighbour's good copy can replace it


class QuotaExceeded(StoreError):
    """Storing this would pass the store's quota."""


class StoreFull(StoreError):
    """The disk is full; nothing already stored was lost."""


class StoreLocked(StoreError):
    """Another process holds the store for an operation that needs it alone (gc, verify)."""


class ImportFailed(EdgeError):
    """The input cannot be imported (unreadable, not a file/directory/symlink, a bad name); nothing was pinned."""
