"""`python -m metadino ...` (also what `torchrun -m metadino train ...` runs)."""

import sys

from metadino.cli import main

sys.exit(main())
