"""The one exception type for bad input, carrying file, location and reason for each problem."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input.

    Args:
        file: the file (or folder) concerned, as the user would type it.
        location: where in the file, e.g. ``"row 17, column 'floor1'"``; empty when the whole file.
        reason: what is wrong, in words a user can act on.
    """

    file: str
    location: str
    reason: str

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        if not self.file and not where:  # a setting, not a file: the reason alone
            return self.reason
        return f"{self.file}{where}: {self.reason}"


class DataValidationError(ValueError):
    """Bad input data: one or more problems, each naming the file, the location and the reason.

    All problems found in a dataset are collected and raised together (up to ``MAX_SHOWN`` are
    listed in the message), so a user fixes them in one pass rather than one per run.
    """

    MAX_SHOWN = 20

    def __init__(self, problems: list[Problem] | Problem | str, file: str = "", location: str = ""):
        if isinstance(problems, str):
            problems = [Problem(file, location, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__(self._message())

    def _message(self) -> str:
        shown = self.problems[: self.MAX_SHOWN]
        lines = [str(p) for p in shown]
        more = len(self.problems) - len(shown)
        if more > 0:
            lines.append(f"... and {more} more problem(s)")
        if len(lines) == 1:
            return lines[0]
        return f"{len(self.problems)} problems in the data:\n  " + "\n  ".join(lines)


class ConfigError(ValueError):
    """A setting that cannot work (the message names it and the reason).

    The command line raises it when building the configured data module, model or trainer
    fails on a value of the config; it prints the message as one line and exits with status 2.
    """


class ExportVerificationError(RuntimeError):
    """An exported model does not load or does not reproduce the eager model's output."""


class OutputLocationError(OSError):
    """The run folder cannot be written (permissions, full disk, or it already holds a run)."""
