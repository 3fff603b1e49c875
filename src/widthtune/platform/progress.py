"""The live progress display: per study, trials done / running / stopped / errored, the best so far, elapsed and
ETA, and the epoch each running trial is at; an errored trial gets one line with its reason."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.text import Text

from widthtune.platform.recorder import error_reason


@dataclass(frozen=True)
class Counts:
    """Where a study's trials are."""

    done: int = 0
    running: int = 0
    stopped: int = 0
    errored: int = 0
    pending: int = 0

    @property
    def ended(self) -> int:
        """Trials that will not run again."""
        return self.done + self.stopped + self.errored


def _errored(trial: Any) -> bool:
    return trial.status == "ERROR" or (trial.status == "TERMINATED" and "error" in (trial.last_result or {}))


def count(trials: list) -> Counts:
    """The study's trials by where they are (a scheduler's early stop is `stopped`, not `done`)."""
    done = running = stopped = errored = pending = 0
    for trial in trials:
        last = trial.last_result or {}
        if _errored(trial):
            errored += 1
        elif trial.status == "TERMINATED":
            planned = last.get("epochs")
            if planned is not None and last.get("epoch", 0) < planned:
                stopped += 1
            else:
                done += 1
        elif trial.status == "RUNNING":
            running += 1
        else:
            pending += 1
    return Counts(done, running, stopped, errored, pending)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


class ProgressLine(tune.Callback):
    """One live line per study on a terminal; elsewhere a printed line whenever something other than the clock
    changed. Picklable (Tune saves its callbacks): the display is rebuilt after a restore."""

    def __init__(self, study: str, metric: str, mode: str, total: int, out: TextIO | None = None) -> None:
        self.study = study
        self.metric = metric
        self.mode = mode
        self.total = total
        self.out = out
        self._best: float | None = None
        self._started = time.monotonic()
        self._live: Live | None = None
        self._printed = ""
        self._reported: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = None
        state["out"] = None
        return state

    @property
    def stream(self) -> TextIO:
        """Where the display goes (standard output unless told otherwise)."""
        return self.out or sys.stdout

    def _update_best(self, trials: list) -> None:
        for trial in trials:
            last = trial.last_result or {}
            if "error" in last or last.get(self.metric) is None:
                continue
            value = float(last[self.metric])
            if self._best is None or (value > self._best if self.mode == "max" else value < self._best):
                self._best = value

    def line(self, trials: list, now: float | None = None) -> tuple[str, str]:
        """The line without its clock (what decides whether it changed) and the clock part."""
        self._update_best(trials)
        counts = count(trials)
        total = max(self.total, len(trials))
        best = f"{self._best:.4f}" if self._best is not None else "-"
        epochs = [
            f"{(t.last_result or {}).get('epoch', 0)}/{(t.last_result or {}).get('epochs', '?')}"
            for t in trials
            if t.status == "RUNNING"
        ]
        text = (
            f"[{self.study}] {counts.ended}/{total} ended: {counts.done} done · {counts.stopped} stopped · "
            f"{counts.errored} errored · {counts.running} running"
            + (f" (epoch {', '.join(epochs)})" if epochs else "")
            + f" · best {self.metric} {best}"
        )
        elapsed = (now if now is not None else time.monotonic()) - self._started
        left = total - counts.ended
        eta = f" · ETA {_clock(elapsed / counts.ended * left)}" if counts.ended and left > 0 else ""
        return text, f" · {_clock(elapsed)} elapsed{eta}"

    def _emit(self, trials: list) -> None:
        text, clock = self.line(trials)
        if self.stream.isatty():
            if self._live is None:
                self._live = Live(console=Console(file=self.stream), auto_refresh=False, transient=False)
                self._live.start()
            self._live.update(Text(text + clock), refresh=True)
        elif text != self._printed:
            self._printed = text
            self.stream.write(text + clock + "\n")
            self.stream.flush()

    def _say_errors(self, trials: list) -> None:
        for trial in trials:
            if trial.trial_id in self._reported or not _errored(trial):
                continue
            self._reported.add(trial.trial_id)
            reason = (trial.last_result or {}).get("error") or error_reason(trial)
            message = f"[{self.study}] trial {trial.trial_id} errored: {reason}"
            if self._live is not None:
                self._live.console.print(message, markup=False, highlight=False)
            else:
                self.stream.write(message + "\n")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """A trial reported an epoch."""
        self._emit(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial ended."""
        self._say_errors(trials)
        self._emit(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial raised."""
        self._say_errors(trials)
        self._emit(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The study's last line stays on screen."""
        self._emit(trials)
        if self._live is not None:
            self._live.stop()
            self._live = None
