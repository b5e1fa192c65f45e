"""Every HTML page thumbsae writes comes from one Jinja2 environment and one stylesheet.

Templates and `thumbsae.css` live in `thumbsae/report/templates/`. Autoescape is on for every
template, so any text that came from data (file names, feature names, titles, channel ids) is
escaped where it is printed; `href` URL-quotes a relative link to a file beside the page. Pages are
self-contained: the stylesheet is inlined, and no page loads scripts or remote resources.
"""

from __future__ import annotations

import math
from functools import lru_cache
from urllib.parse import quote

import jinja2

DASH = "\u2014"


def href(rel_path: object) -> str:
    """A relative link to a file beside the page, URL-quoted (autoescape then escapes it)."""
    return quote(str(rel_path), safe="/")


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def number(value: object, fmt: str = ".3g", missing: str = DASH) -> str:
    """`value` formatted with `fmt` (Python format spec), or `missing` for None/NaN/non-numbers."""
    finite = _finite(value)
    return missing if finite is None else format(finite, fmt)


def signed(value: object, digits: int = 3) -> str:
    """`+0.123` / `-0.123`, or a dash when missing."""
    return number(value, f"+.{digits}f")


def count(value: object) -> str:
    """A view count (or any statistic) in a few characters: 38685 -> '38.7k'."""
    v = _finite(value)
    if v is None:
        return "n/a"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{suffix}"
    return f"{v:.0f}" if v.is_integer() else f"{v:.3g}"


def percent(value: object, digits: int = 0) -> str:
    """0.71 -> '71%'; a dash when missing."""
    finite = _finite(value)
    return DASH if finite is None else f"{100 * finite:.{digits}f}%"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja2 environment: package templates, autoescape on, undefined names are errors."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("thumbsae.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(href=href, number=number, signed=signed, count=count, percent=percent)
    return env


def render_page(template: str, **context: object) -> str:
    """Render `template` (a file of `report/templates/`) with `context`; returns the page text."""
    return environment().get_template(template).render(**context)
