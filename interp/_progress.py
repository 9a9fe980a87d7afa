"""The progress bar of a run that can be long or short (exact edge patching, an SAE's evaluation, head scores
over a corpus): on stderr, shown only once the run has taken ``DELAY_S``, so a short run prints nothing."""

from __future__ import annotations

import sys

DELAY_S = 2.0


def progress_bar(total: int, *, unit: str, desc: str, enabled: bool = True):
    """A ``tqdm`` bar (a context manager; ``update(n)`` as work is done)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, delay=DELAY_S, disable=not enabled, file=sys.stderr)
