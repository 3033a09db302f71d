#!/usr/bin/env python3
"""Measured training dynamics of a PyTorch model. Usage: python scripts/probe.py TARGET --loss FILE.py:FN [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.probe.cli import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
