"""``python -m shmlot.stat``: the ``shmlot-stat`` command (``shmlot.cli``).

The command is documented under this module name, so it stays; the code lives in ``shmlot.cli``
so that no module of the package carries the name of the standard library's ``stat``.
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
