"""python -m tools.plan (the command is in cli.py)."""
import sys

from tools.plan.cli import main

if __name__ == '__main__':
  sys.exit(main())
