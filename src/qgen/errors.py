"""The one exception type users see: a one-line message saying what was wrong and what is allowed."""


class QgenError(Exception):
    """Bad input or a missing asset, reported as one line before any expensive work."""
