"""Media errors: each message names the input and says what to do."""

from edge.errors import EdgeError


class MediaError(EdgeError):
    """An input FFmpeg cannot read, a codec this build lacks, a ladder that makes no sense."""
