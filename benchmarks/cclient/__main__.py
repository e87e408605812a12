"""`python -m benchmarks.cclient`: the compiled load generator (see the package docstring)."""

import sys

from benchmarks.cclient import main

sys.exit(main())
