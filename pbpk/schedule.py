"""Administrations and schedules.

An `Administration` is one injection: time (h, on the schedule's clock), activity (MBq),
total ligand amount (nmol, labelled + unlabelled) and tracer.  The labelled amount is the
carrier-free amount of the activity, hot = A / (lambda N_A); the rest is cold ligand,
cold = ligand_nmol - hot.  A `Schedule` is a time-ordered list of administrations,
e.g. a 68Ga-PSMA-11 PET followed by several 177Lu-PSMA-617 therapy cycles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import ScheduleError
from .tracers import Tracer, tracer as _tracer


@dataclass(frozen=True)
class Administration:
    """One injection.  `ligand_nmol=None` means carrier-free (all ligand labelled)."""

    time_h: float
    activity_mbq: float
    ligand_nmol: float | None = None
    tracer: Tracer | str = "Lu-177-PSMA-617"

    def __post_init__(self):
        object.__setattr__(self, "tracer", _tracer(self.tracer))
        for field_name in ("time_h", "activity_mbq"):
            v = getattr(self, field_name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ScheduleError(f"administration {field_name} must be a finite number, got {v!r}")
        if self.activity_mbq < 0:
            raise ScheduleError(f"administration at {self.time_h} h: activity_mbq = {self.activity_mbq}; expected >= 0")
        if self.ligand_nmol is not None:
            if not isinstance(self.ligand_nmol, (int, float)) or not math.isfinite(self.ligand_nmol) or self.ligand_nmol < 0:
                raise ScheduleError(
                    f"administration at {self.time_h} h: ligand_nmol = {self.ligand_nmol!r}; expected a number >= 0"
                )
            if self.ligand_nmol < self.hot_nmol * (1 - 1e-9):
                raise ScheduleError(
                    f"administration at {self.time_h} h: ligand_nmol = {self.ligand_nmol} nmol is less than the "
                    f"carrier-free amount {self.hot_nmol:.4g} nmol of {self.activity_mbq} MBq {self.tracer.name}"
                )

    @property
    def hot_nmol(self) -> float:
        """Labelled ligand (nmol) = activity / (lambda N_A)."""
        return self.tracer.hot_nmol(self.activity_mbq)

    @property
    def cold_nmol(self) -> float:
        """Unlabelled ligand (nmol) = total - labelled."""
        if self.ligand_nmol is None:
            return 0.0
        return max(self.ligand_nmol - self.hot_nmol, 0.0)


class Schedule:
    """A time-ordered sequence of administrations (sorted on construction)."""

    def __init__(self, administrations: Iterable[Administration]):
        admins = list(administrations)
        if not admins:
            raise ScheduleError("a schedule needs at least one administration")
        for a in admins:
            if not isinstance(a, Administration):
                raise ScheduleError(f"schedule entries must be pbpk.Administration, got {type(a).__name__}")
        self.administrations: tuple[Administration, ...] = tuple(sorted(admins, key=lambda a: a.time_h))

    @classmethod
    def cycles(
        cls,
        n: int,
        activity_mbq: float,
        ligand_nmol: float | None,
        interval_h: float,
        tracer: str = "Lu-177-PSMA-617",
        start_h: float = 0.0,
    ) -> "Schedule":
        """`n` identical administrations every `interval_h` hours from `start_h`."""
        if n < 1 or interval_h <= 0:
            raise ScheduleError(f"cycles: need n >= 1 and interval_h > 0, got n={n}, interval_h={interval_h}")
        return cls(Administration(start_h + k * interval_h, activity_mbq, ligand_nmol, tracer) for k in range(n))

    def __add__(self, other: "Schedule") -> "Schedule":
        return Schedule(self.administrations + other.administrations)

    def __iter__(self):
        return iter(self.administrations)

    def __len__(self) -> int:
        return len(self.administrations)

    def __repr__(self) -> str:
        rows = ", ".join(f"{a.tracer.name} {a.activity_mbq:g} MBq/{a.ligand_nmol} nmol @ {a.time_h:g} h" for a in self)
        return f"Schedule([{rows}])"

    @property
    def tracers(self) -> tuple[Tracer, ...]:
        seen: dict[str, Tracer] = {}
        for a in self:
            seen.setdefault(a.tracer.name, a.tracer)
        return tuple(seen.values())

    @property
    def event_times_h(self) -> tuple[float, ...]:
        """Distinct administration times (h), ascending."""
        return tuple(sorted({a.time_h for a in self}))

    @property
    def first_time_h(self) -> float:
        return self.administrations[0].time_h

    @property
    def last_time_h(self) -> float:
        return self.administrations[-1].time_h

    def injected_activity_mbq(self, nuclide: str) -> list[tuple[float, float]]:
        """(time_h, activity_mbq) of the administrations of `nuclide`."""
        return [(a.time_h, a.activity_mbq) for a in self if a.tracer.nuclide == nuclide]


def as_schedule(schedule: Schedule | Administration | Sequence[Administration]) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Administration):
        return Schedule([schedule])
    return Schedule(schedule)
