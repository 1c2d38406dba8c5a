#!/usr/bin/env python3
"""Entry point of the builder; everything lives in pyinit.builder."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from pyinit.builder.cli import main
except ImportError as err:  # a clone without `pip install -e .`: a dependency is missing
    from pyinit.builder import missing

    sys.exit(f"mkinitramfs.py: error: {missing.message(err)}")

if __name__ == "__main__":
    sys.exit(main())
