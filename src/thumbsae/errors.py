"""The one exception type every thumbsae stage raises for bad input.

The command line prints its message as a single line and exits non-zero, so each message names
the file (and row, where there is one) and the reason.
"""


class ThumbsaeError(Exception):
    """A user-facing failure: bad input, a missing model, an unwritable folder."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """`err`'s message on one line (white space folded, at most `limit` characters), or its type name."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:limit]
