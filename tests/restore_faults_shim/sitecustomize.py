"""Imported by Python at startup when this folder is on PYTHONPATH: see tests/restore_faults.py."""
from tests.restore_faults import install_from_environment

install_from_environment()
