"""The progress display's counts and lines, on stand-in trials (the fields Tune's Trial has)."""

import io
from dataclasses import dataclass, field

from widthtune.platform.progress import ProgressLine, count


@dataclass
class Trial:
    trial_id: str
    status: str
    last_result: dict = field(default_factory=dict)
    error_file: str | None = None

    def get_pickled_error(self):
        return None


def trials():
    return [
        Trial("a", "TERMINATED", {"epoch": 4, "epochs": 4, "val_acc": 0.9}),
        Trial("b", "TERMINATED", {"epoch": 1, "epochs": 4, "val_acc": 0.5}),
        Trial("c", "TERMINATED", {"epoch": 0, "error": "CostTargetError: out of reach", "val_acc": 0.0}),
        Trial("d", "RUNNING", {"epoch": 2, "epochs": 4, "val_acc": 0.7}),
        Trial("e", "PENDING"),
    ]


def test_counts_tell_done_from_stopped_errored_running_and_pending():
    counts = count(trials())
    assert (counts.done, counts.stopped, counts.errored, counts.running, counts.pending) == (1, 1, 1, 1, 1)
    assert counts.ended == 3


def test_the_line_has_totals_best_epochs_elapsed_and_eta():
    progress = ProgressLine("s", "val_acc", "max", total=6)
    text, clock = progress.line(trials(), now=progress._started + 30)
    assert text.startswith("[s] 3/6 ended: 1 done · 1 stopped · 1 errored · 1 running (epoch 2/4)")
    assert text.endswith("best val_acc 0.9000")  # an errored trial's 0.0 is not a result
    assert clock == " · 0:30 elapsed · ETA 0:30"


def test_off_a_terminal_a_line_is_printed_only_when_it_changes_and_errors_get_one_line():
    out = io.StringIO()
    progress = ProgressLine("s", "val_acc", "max", total=6, out=out)
    progress.on_trial_result(0, trials(), None, {})
    progress.on_trial_result(0, trials(), None, {})  # nothing but the clock changed
    progress.on_trial_complete(0, trials(), None)
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("[s] 3/6 ended") for line in lines) == 1
    assert lines.count("[s] trial c errored: CostTargetError: out of reach") == 1
