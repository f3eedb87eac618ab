#!/usr/bin/env python3
"""shmlot benchmark: shmlot side by side with its peers, every target decided on 95 % intervals.

    python tools/bench.py                      # full run, table on stdout
    python tools/bench.py --quick              # short run
    python tools/bench.py --only pingpong,park --repeat 7 --json out.json --plot out.png
    python tools/bench.py --help               # the scenarios and every option

The measuring lives in the package tools/benchlib (see its __init__ for the layout). The run uses
its own lot (a unique name, exported as SHMLOT_LOT so that children use it too) and unlinks it at
the end; the user's default lot is never touched.
"""
import sys

from benchlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
