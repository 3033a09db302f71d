#!/usr/bin/env python3
"""The full model-expert review: python scripts/report.py TARGET [options] --out DIR; --help for all."""
import sys

from model_expert.cli import main
from model_expert.report import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
