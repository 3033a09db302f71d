#!/usr/bin/env python3
"""Autograd lint of a PyTorch model. Usage: python scripts/lint.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.lint.cli import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
