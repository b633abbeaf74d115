"""`python -m qcompile ...` is the `qcompile` command."""
import sys

from .cli import main

sys.exit(main())
