"""python -m tools.benchmark (the command is in cli.py)."""
import sys

from tools.benchmark.cli import main

if __name__ == '__main__':
  sys.exit(main())
