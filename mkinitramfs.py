#!/usr/bin/env python3
"""Entry point of the builder; everything lives in pyinit.builder."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pyinit.builder.cli import main

if __name__ == "__main__":
    sys.exit(main())
