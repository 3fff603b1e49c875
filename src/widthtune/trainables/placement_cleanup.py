"""A DDP trial's Train placement group, removed once the trial's own process is gone.

Tune ends a trial (a scheduler's stop, or its last epoch) by ending the trial's process; the Train run it started
dies with it, but that run's placement group belongs to the job and outlives it, holding the CPUs and GPUs every
later trial waits for. Ray Train's own cleaner asks Ray's state API, which a local Ray without its dashboard
does not serve (nor one among several Ray instances on a host). So each DDP trial starts a detached actor that
holds a call on the trial's process: when the process dies the call fails, and the actor removes the placement
group rank 0 handed it, then ends itself.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

WATCH_SECONDS = 2.0


class PlacementCleanup:
    """Removes the placement group it guards once the actor it watches is dead (a Ray actor, detached)."""

    def __init__(self, watched: Any) -> None:
        self.watched = watched
        self.group: Any = None
        self.lock = threading.Lock()

    def guard(self, group: Any) -> None:
        """The placement group to remove (the current Train worker group's)."""
        with self.lock:
            self.group = group

    def watch(self) -> None:
        """Wait for the watched actor's death, remove the guarded group, end this actor."""
        import ray
        from ray.exceptions import RayActorError
        from ray.util.placement_group import remove_placement_group

        while True:
            call = self.watched.__ray_ready__.remote()
            while not ray.wait([call], timeout=WATCH_SECONDS)[0]:
                pass  # queued behind the trial's work: still alive
            try:
                ray.get(call)
            except RayActorError:
                break
            threading.Event().wait(WATCH_SECONDS)
        with self.lock:
            group = self.group
        if group is not None:
            with contextlib.suppress(Exception):  # already removed by Train's own shutdown
                remove_placement_group(group)
        ray.kill(ray.get_runtime_context().current_actor)


def start_cleanup() -> Any:
    """A detached cleanup watching the calling actor (the Tune trial's process); rank 0 hands it its group."""
    import ray

    actor = ray.remote(num_cpus=0, max_concurrency=2)(PlacementCleanup)
    # DEFAULT: outside the trial's own placement group, which Tune removes (and every actor in it) with the trial
    cleanup = actor.options(lifetime="detached", scheduling_strategy="DEFAULT").remote(
        ray.get_runtime_context().current_actor
    )
    cleanup.watch.remote()
    return cleanup
