#!/usr/bin/env python3
"""Training configuration from measured numbers and the seed's rules. Usage: python scripts/recommend.py TARGET [options]; --help for all."""
import sys

from model_expert.cli import main
from model_expert.recommend import CAPABILITY

if __name__ == "__main__":
    sys.exit(main(CAPABILITY))
