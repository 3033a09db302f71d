#!/usr/bin/env python3
"""Shape walk-through of a PyTorch model's forward. Usage: python scripts/trace.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.trace import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
