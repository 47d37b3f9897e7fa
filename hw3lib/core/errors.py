"""User-facing errors: `HW3Error` (a problem with the user's input or files), and the one line a
command prints for any exception.
"""

from __future__ import annotations


class HW3Error(Exception):
    """A problem with the user's input or files. The CLI prints it as one line and exits non-zero."""


def error_line(e: BaseException, command: str) -> str:
    """The one line an exception that escaped `command` prints after `error: `. Input errors say
    what is wrong with which file or argument; anything else is labelled an internal error, so it
    stays visible and never passes for a problem with the input."""
    if isinstance(e, HW3Error):
        return str(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else f"{command}: "
        return f"{where}{e.strerror or first_line(e)}"
    if isinstance(e, UnicodeError):
        return f"{command}: text that is not valid UTF-8 ({first_line(e)})"
    if isinstance(e, MemoryError):
        return f"{command}: out of memory (MemoryError)"
    if isinstance(e, RecursionError):
        return f"{command}: input nested too deeply (RecursionError)"
    return f"{command}: internal error (please report): {type(e).__name__}: {first_line(e)}"


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first line (its class name when it has no text), for one-line error messages."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else e.__class__.__name__)[:limit]


def invalid(e, what: str, section: str = "") -> HW3Error:
    """A pydantic ValidationError as one HW3Error line: "WHAT: [SECTION.]key=value (why)" for its first
    error."""
    err = e.errors()[0]
    key = ".".join([section] * bool(section) + [str(x) for x in err["loc"]]) or "(top level)"
    more = f"; and {e.error_count() - 1} more" if e.error_count() > 1 else ""
    shown = err.get("input")
    value = f"={shown!r}" if err["type"] != "missing" and not isinstance(shown, dict) else ""
    return HW3Error(f"{what}: {key}{value} ({err['msg'][0].lower()}{err['msg'][1:]}{more})")
