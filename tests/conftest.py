"""Shared test configuration."""

from hypothesis import settings

# CI runs on 2 shared cores: no hypothesis deadline (timing is never asserted in a test).
settings.register_profile("hearth", deadline=None, print_blob=True)
settings.load_profile("hearth")
