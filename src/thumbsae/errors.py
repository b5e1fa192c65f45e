"""The one exception type every thumbsae stage raises for bad input.

The command line prints its message as a single line and exits non-zero, so each message names
the file (and row, where there is one) and the reason.
"""


class ThumbsaeError(Exception):
    """A user-facing failure: bad input, a missing model, an unwritable folder."""
