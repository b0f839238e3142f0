"""`python -m tools.plan`: parameters, FLOPs, mesh and memory per device of a job before it is launched.

cli.py (the command), mesh.py (the trainer on each candidate mesh, the suggestion), memory.py (bytes per device).
"""
