"""A lost process of a multi-process job stops all the others, each with one line naming it.

JAX's runtime notices a process that stopped sending heartbeats too, but it ends the others with a C++ fatal
log and a stack dump of every thread. This watchdog answers first: every process publishes a beat in the
coordination service's key-value store every timeout_s / 10 and reads the others'. A peer whose beat has not
moved for timeout_s (dead, hung, or unreachable) is lost: every other process writes `error: lost process ...`
and exits with code 1, wherever its main thread waits (a collective, a checkpoint barrier, JAX's shutdown).
JAX's own heartbeat timeout is set longer (runtime_heartbeat_timeout), as the backstop. The beats come from
Python: a process whose interpreter is stuck that long in one call that holds the GIL counts as lost (XLA's
compiles and collectives, Orbax and SentencePiece training let go of it).

Not covered: when process 0 dies, the coordination service dies with it, and JAX's runtime aborts the others
at once (a fatal log, `Terminating process because the JAX distributed service detected fatal errors`).
"""
import atexit
import os
import sys
import threading
import time

from absl import logging

DEFAULT_TIMEOUT_S = 100  # JAX's own default: slow hosts and busy networks of a pod are not lost
EXIT_CODE = 1
KEY_PREFIX = 'flax_pretrain/peer_watchdog/'


def runtime_heartbeat_timeout(timeout_s: int) -> int:
  """JAX's heartbeat timeout: later than the watchdog's verdict (and process 0's wait for the others to go)."""
  return timeout_s + max(timeout_s, 30)


def lost_message(lost: list[int], process_id: int, num_processes: int, timeout_s: float,
                 coordinator_address: str = '') -> str:
  what = f'process{"es" if len(lost) > 1 else ""} {", ".join(map(str, lost))} of {num_processes}'
  if lost == [0] and coordinator_address:
    what += f' (the coordinator, {coordinator_address})'
  return (f'error: lost {what}: no heartbeat for {timeout_s:g} s (it died, hangs or cannot be reached); '
          f'process {process_id} stops too. Restart all {num_processes} processes (same flags, same --workdir) '
          'to resume from the last checkpoint')


class PeerWatchdog:
  """One per process, on a daemon thread (start); client: the jax.distributed runtime client."""

  def __init__(self, client, process_id: int, num_processes: int, timeout_s: float, coordinator_address: str = ''):
    self.client, self.process_id, self.num_processes = client, process_id, num_processes
    self.timeout_s, self.interval_s, self.coordinator_address = timeout_s, timeout_s / 10, coordinator_address
    now = time.monotonic()
    self._moved = {peer: now for peer in range(num_processes) if peer != process_id}  # when each beat last moved
    self._beats = {}
    self._answered = self._observed = now  # the service's last answer; this watchdog's last look
    self._done = threading.Event()

  def start(self) -> None:
    atexit.register(self.mark_done)  # runs before jax's own atexit shutdown, which waits for every process
    threading.Thread(target=self._run, name='peer-watchdog', daemon=True).start()

  def mark_done(self) -> None:
    """This process exits by itself (finished, or its own error): not lost while it waits in JAX's shutdown."""
    self._done.set()
    try:
      self.client.key_value_set(f'{KEY_PREFIX}done/{self.process_id}', '1', allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  # the service is gone: nobody is left to tell
      pass

  def observe(self, now: float, entries: dict[str, str] | None) -> list[int]:
    """Folds in one read of the key-value store (None: no answer); returns the lost peers."""
    if now - self._observed > 3 * self.interval_s:  # this process stalled: it cannot tell who else did
      self._moved = dict.fromkeys(self._moved, now)
      self._answered = now
    self._observed = now
    if entries is None:
      silent = now - self._answered > self.timeout_s
      return [0] if silent and self.process_id != 0 else []
    self._answered = now
    for peer in self._moved:
      beat = entries.get(f'{KEY_PREFIX}beat/{peer}')
      if beat != self._beats.get(peer) or f'{KEY_PREFIX}done/{peer}' in entries:
        self._beats[peer], self._moved[peer] = beat, now
    return [peer for peer, moved in self._moved.items() if now - moved > self.timeout_s]

  def _run(self) -> None:
    beat = 0
    while True:
      beat += 1
      try:
        self.client.key_value_set(f'{KEY_PREFIX}beat/{self.process_id}', str(beat), allow_overwrite=True)
        entries = dict(self.client.key_value_dir_get(KEY_PREFIX))
      except Exception:  # pylint: disable=broad-except  # no answer from the coordination service
        if self._done.is_set():  # JAX's shutdown closed the connection: the job is over
          return
        entries = None
      lost = self.observe(time.monotonic(), entries)
      if lost:
        self._stop(lost)
      time.sleep(self.interval_s)

  def _stop(self, lost: list[int]) -> None:
    if self.process_id == 0 and len(lost) < self.num_processes - 1:
      time.sleep(2 * self.interval_s)  # the others see it too: let them go first, they die with process 0
    logging.flush()
    sys.stderr.write(lost_message(lost, self.process_id, self.num_processes, self.timeout_s,
                                  self.coordinator_address) + '\n')
    sys.stderr.flush()
    os._exit(EXIT_CODE)  # pylint: disable=protected-access  # the main thread may wait in a collective for good
