#!/usr/bin/env python3
"""A/B timing of two builds of shmlot, interleaved, with a 95 % interval on the ratio
(see tools/benchlib/ab.py)."""
import sys

from benchlib.ab import main

if __name__ == "__main__":
    sys.exit(main())
