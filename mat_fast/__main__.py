"""``python -m mat_fast`` = the ``mat-fast`` command."""

import sys

from .cli import main

sys.exit(main())
