"""The exception root. Subclasses are grouped by what the caller can do about them."""


class EdgeError(Exception):
    """Base of every error Hearth raises on purpose."""


class NativeMissing(EdgeError, ImportError):
    """A native kernel is not built and REQUIRE_NATIVE=1 forbids falling back to the reference."""


class DecodeError(EdgeError, ValueError):
    """Bytes or text from outside (a file, a peer, a user) are not what the format allows; the message says why."""


def first_error(group: BaseException) -> BaseException:
    """The error to report from a Trio nursery's exception group: the one inside nested one-member groups, or
    the first EdgeError (parallel tasks that all failed for the same reason), else the group itself."""
    while isinstance(group, BaseExceptionGroup):
        if len(group.exceptions) == 1:
            group = group.exceptions[0]
            continue
        matched, _ = group.split(EdgeError)
        if matched is None:
            return group
        group = matched.exceptions[0]
    return group
