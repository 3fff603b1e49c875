"""An experiment stopped by the user before its trials ended (kept light: the CLI imports it at start-up)."""


class ExperimentInterrupted(RuntimeError):
    """A study stopped before all its trials ended (Ctrl-C); `widthtune resume DIR` continues it."""
