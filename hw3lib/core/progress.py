"""Progress bars: `progress(iterable, shown=...)` is tqdm's bar when `shown`, else the iterable as it is.

A shown bar leaves `disable` to tqdm, so tqdm's own settings apply (`TQDM_DISABLE=1` silences every bar,
`TQDM_MININTERVAL` slows them); the library itself reads no environment variable for this.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def progress(iterable=None, shown: bool = True, **kwargs):
    """A tqdm bar over `iterable` (or one to update by hand: `total=`), or a silent one when not `shown`."""
    if not shown:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
