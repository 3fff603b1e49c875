"""The live progress line: trials done / running / stopped / errored and the best so far."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray import tune


class ProgressLine(tune.Callback):
    """Prints one line per change (at most every `interval` seconds), rewriting it in place on a terminal."""

    def __init__(self, study: str, metric: str, mode: str, total: int, interval: float = 2.0) -> None:
        self.study = study
        self.metric = metric
        self.mode = mode
        self.total = total
        self.interval = interval
        self._last = 0.0
        self._best: float | None = None

    def _line(self, trials: list) -> str:
        counts = {"done": 0, "running": 0, "stopped": 0, "errored": 0}
        for t in trials:
            last = t.last_result or {}
            if t.status == "ERROR" or (t.status == "TERMINATED" and "error" in last):
                counts["errored"] += 1
            elif t.status == "TERMINATED":
                planned = last.get("epochs")
                stopped = planned is not None and last.get("epoch", 0) < planned
                counts["stopped" if stopped else "done"] += 1
            elif t.status == "RUNNING":
                counts["running"] += 1
            if "error" not in last and last.get(self.metric) is not None:
                value = float(last[self.metric])
                better = self._best is None or (
                    value > self._best if self.mode == "max" else value < self._best
                )
                self._best = value if better else self._best
        best = f"{self._best:.4f}" if self._best is not None else "-"
        total = max(self.total, len(trials))
        return (
            f"[{self.study}] trials {counts['done']}/{total} done · {counts['running']} running · "
            f"{counts['stopped']} stopped · {counts['errored']} errored · best {self.metric} {best}"
        )

    def _emit(self, trials: list, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = self._line(trials)
        if sys.stdout.isatty():
            sys.stdout.write("\r\033[K" + line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Refresh (throttled)."""
        self._emit(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Refresh now."""
        self._emit(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Refresh now."""
        self._emit(trials, force=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Final line."""
        self._emit(trials, force=True)
        if sys.stdout.isatty():
            sys.stdout.write("\n")
