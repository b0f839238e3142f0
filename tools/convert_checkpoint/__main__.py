"""python -m tools.convert_checkpoint (the command is in cli.py)."""
import sys

from tools.convert_checkpoint.cli import main

if __name__ == '__main__':
  sys.exit(main())
