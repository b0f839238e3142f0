"""Multi-process jobs through JAX's own runtime: `jax.distributed.initialize()`, and small host collectives.

A job has several processes on a TPU pod slice (one per host), on a SLURM GPU cluster, or when started by hand
with --coordinator_address/--num_processes/--process_id (any cluster, or several processes on 127.0.0.1).
"""
import json
import logging

import jax
import numpy as np

from pretrain.runtime import peer_watchdog
from pretrain.runtime.errors import ConfigError, require

log = logging.getLogger(__name__)


def detected_cluster() -> str | None:
  """The cluster environment JAX's auto-detection would use (GceTpuCluster, SlurmCluster, ...), or None.

  Only environments JAX detects without being asked (TPU VMs, SLURM, Open MPI, ...); the lookup uses JAX's
  internal registry and finds nothing if a JAX release moves it (pass the three flags then).
  """
  try:
    from jax._src.clusters import ClusterEnv  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  for env in getattr(ClusterEnv, '_cluster_types', ()):
    try:
      if not getattr(env, 'opt_in_only_method', False) and env.is_env_present():
        return env.__name__
    except Exception:  # pylint: disable=broad-except  # a probe that cannot run here is not this cluster
      continue
  return None


def initialize(coordinator_address: str = '', num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300, heartbeat_timeout_s: int = peer_watchdog.DEFAULT_TIMEOUT_S) -> bool:
  """Joins the job's processes; returns True when jax.distributed was initialised.

  With the three arguments: that job. Without them: JAX's auto-detection when a TPU pod or SLURM job (or another
  cluster JAX knows) is detected; otherwise a one-process job. Must run before anything touches a device.
  A process silent for heartbeat_timeout_s stops all the others, each with one line (pretrain.runtime.peer_watchdog).
  """
  require(heartbeat_timeout_s >= 1, f'--heartbeat_timeout_s: must be >= 1, got {heartbeat_timeout_s}')
  timeouts = {'initialization_timeout': timeout_s,
              'heartbeat_timeout_seconds': peer_watchdog.runtime_heartbeat_timeout(heartbeat_timeout_s)}
  explicit = {'--coordinator_address': coordinator_address, '--num_processes': num_processes,
              '--process_id': process_id}
  given = [flag for flag, value in explicit.items() if value not in ('', None)]
  if given:
    missing = [flag for flag in explicit if flag not in given]
    if missing:
      raise ConfigError(f'{missing[0]}: needed with {", ".join(given)} (give all three, or none to auto-detect)')
    require(':' in coordinator_address, f'--coordinator_address: expected HOST:PORT, got {coordinator_address!r}')
    require(num_processes >= 1, f'--num_processes: must be >= 1, got {num_processes}')
    require(0 <= process_id < num_processes,
            f'--process_id: must be in [0, {num_processes}) for --num_processes {num_processes}, got {process_id}')
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeouts)
  else:
    cluster = detected_cluster()
    if cluster is None:
      return False
    log.info('jax.distributed: auto-detected %s', cluster)
    jax.distributed.initialize(**timeouts)
  _watch_peers(heartbeat_timeout_s)
  log.info('jax.distributed: process %d of %d, %d local of %d devices', jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return True


def _watch_peers(timeout_s: int) -> None:
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  state = jax_distributed.global_state
  if getattr(state, 'client', None) is None:  # a JAX release that moved it: JAX's own (cruder) check remains
    log.warning('jax.distributed: no runtime client found; a lost process is reported by JAX\'s runtime only')
    return
  if state.num_processes > 1:
    peer_watchdog.PeerWatchdog(state.client, state.process_id, state.num_processes, timeout_s,
                               state.coordinator_address or '').start()


def quiet_other_processes() -> None:
  """Progress lines come from process 0; the others log warnings and errors only."""
  if jax.process_index() > 0:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.WARNING)


def broadcast_json(value=None):
  """Process 0's JSON-serialisable value, on every process (the others pass None). A no-op in one process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  is_source = jax.process_index() == 0
  data = json.dumps(value).encode() if is_source else b''
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
  buffer = np.frombuffer(data, np.uint8) if is_source else np.zeros(size, np.uint8)
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())


def allgather_json(value) -> list:
  """Every process's JSON-serialisable value, in process order, on every process. [value] in one process."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = json.dumps(value).encode()
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
  buffer = np.zeros(int(sizes.max()), np.uint8)  # [longest]: every process gathers the same shape
  buffer[:len(data)] = np.frombuffer(data, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(buffer))  # [processes, longest]
  return [json.loads(bytes(row[:size]).decode()) for row, size in zip(rows, sizes)]
