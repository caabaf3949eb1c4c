"""Where a search's Ray work runs: the one connection policy of ``nxmi search`` and ``nxmi profile``.

An already-initialised Ray is used as it is. Otherwise ``address`` (or ``$RAY_ADDRESS``) joins a
cluster, and without either Ray starts embedded on this machine's CPUs. Ray is shut down on the
way out only if this session started it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_session(address: str | None = None, verbose: bool = False) -> Iterator[None]:
    """Ray for the ``with`` block (see the module docstring). Ray's own INFO and WARNING lines
    (its start-up banner, the local token-authentication notice) show only when ``verbose``."""
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        level = logging.INFO if verbose else logging.ERROR
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=level)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=level)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> int:
    """CPUs of the connected Ray cluster (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def node_cpus() -> int:
    """CPUs of the largest live node of the connected Ray cluster (at least 1): the most one
    trial can use."""
    import ray

    return max([1] + [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")])
