"""`python -m sharingmemory`: the same as the `sharingmemory` command."""

import sys

from .cli import main

sys.exit(main())
