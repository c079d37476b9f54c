"""Where the C header of the page ABI is installed, for C clients built against this package.

numpy's convention (`numpy.get_include()`): the folder to pass as `-I`, so that sources say
`#include "sharingmemory/page.h"` whether they build against a checkout or an installed wheel.
"""

from __future__ import annotations

from pathlib import Path


def get_include() -> str:
    """The folder that holds `sharingmemory/page.h` (and every other header of the ABI).

    In a wheel the headers are package data; in a checkout or an editable install
    `src/sharingmemory/include` is a symlink to the repository's `include/`, their one source,
    so a header added there is shipped without a copy that could drift.
    """
    return str(Path(__file__).resolve().parent / "include")
