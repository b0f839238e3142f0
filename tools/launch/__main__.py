"""python -m tools.launch (the command is in cli.py)."""
import sys

from tools.launch.cli import main

if __name__ == '__main__':
  sys.exit(main())
