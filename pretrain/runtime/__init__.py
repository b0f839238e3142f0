"""Plumbing the model never sees: device mesh and sharding rules, jax.distributed and the peer watchdog, Orbax
checkpoints, preemption, the metrics log, atomic files, the error types and command-line conventions.
Imports nothing else of the project."""
