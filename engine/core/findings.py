"""What a check found: problems (the sweep is refused), warnings and notes (shown to the user)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Findings:
    """Problems refuse a sweep; warnings and notes are printed before any work starts."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __iadd__(self, other: Findings) -> Findings:
        self.problems += other.problems
        self.warnings += other.warnings
        self.notes += other.notes
        return self
