"""Sweep workers keep running when a point's memory stays high after it finished.

loky (joblib's default backend) measures each worker's resident memory after its first task and,
when psutil is installed, shuts the worker down once it holds more than 300 MB above that, warning
"A worker stopped while some jobs were given to the executor … memory leak" and starting a new
worker. A sweep point is not a leaking task: measured on the demo's sweep, a worker's first point
(raw descriptors, nothing trained) leaves it at about 340 MB, and the first point that trains
GeoAlign's stream 1 raises it to about 800 MB, almost all of it the C heap's high-water mark
(``[heap]`` in /proc/PID/smaps: +470 MB; no Python tensor or array outlives the point, and further
points, fusion included, add about 10 MB). ``malloc_trim`` gives back only about 100 MB of it. The
worker is then killed for memory it would reuse for the next point, which costs a new process (and
its imports) and the warning.

:func:`keep_worker_on_memory_growth` turns loky's memory-growth check off in the worker it runs in
(loky then only runs ``gc.collect()`` between tasks, as it does without psutil). Points at once and
their torch threads are bounded by the sweep (``sweep.n_jobs``), so memory stays bounded by the
heaviest point per worker.
"""

from __future__ import annotations


def keep_worker_on_memory_growth() -> None:
    """In a loky worker process: do not restart this worker when its resident memory grows."""
    try:
        from joblib.externals.loky import process_executor
    except ImportError:  # another backend (Dask) or a joblib without loky: nothing to turn off
        return
    if hasattr(process_executor, "_USE_PSUTIL"):
        process_executor._USE_PSUTIL = False
