"""Validated fields of the twin's TOML configs (command-line configs and trial configs).

Every function raises `ConfigError` naming `where` (file, table and key) and what was
expected; none evaluates text.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Mapping, Sequence

import pbpk

from .errors import ConfigError

DEFAULT_TRACER = "Lu-177-PSMA-617"
SCHEDULE_KEYS = ("cycles", "activity_mbq", "ligand_nmol", "interval_h", "tracer")


def number(value, where: str, *, positive: bool = True) -> float:
    """A finite number (> 0 when `positive`); bool is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ConfigError(f"{where}: {value!r}; expected a finite number{' > 0' if positive else ''}")
    return float(value)


def integer(value, where: str, *, minimum: int = 1) -> int:
    """An integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {value!r}; expected an integer >= {minimum}")
    return int(value)


def no_unknown(table: Mapping, known: Sequence[str], where: str) -> None:
    """Refuse keys of `table` that are not in `known`."""
    bad = sorted(set(table) - set(known))
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; expected some of {list(known)}")


def table(value, where: str) -> Mapping:
    """A TOML table."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def schedule(spec: Mapping, where: str) -> pbpk.Schedule:
    """A schedule from keys cycles, activity_mbq (per cycle), ligand_nmol (optional; carrier
    free when absent), interval_h (h between cycles; needed when cycles > 1) and tracer
    (default `DEFAULT_TRACER`)."""
    no_unknown(spec, SCHEDULE_KEYS, where)
    for key in ("cycles", "activity_mbq"):
        if key not in spec:
            raise ConfigError(f"{where}: key {key!r} missing")
    n = integer(spec["cycles"], f"{where} key 'cycles'")
    activity = number(spec["activity_mbq"], f"{where} key 'activity_mbq'")
    ligand = None if spec.get("ligand_nmol") is None else number(spec["ligand_nmol"], f"{where} key 'ligand_nmol'")
    if "interval_h" in spec:
        interval = number(spec["interval_h"], f"{where} key 'interval_h'")
    elif n > 1:
        raise ConfigError(f"{where}: key 'interval_h' missing; expected the time between cycles (h) for {n} cycles")
    else:
        interval = 1.0  # unused for one cycle
    name = spec.get("tracer", DEFAULT_TRACER)
    if not isinstance(name, str):
        raise ConfigError(f"{where} key 'tracer': {name!r}; expected a tracer name such as {DEFAULT_TRACER!r}")
    try:
        pbpk.tracer(name)
        return pbpk.Schedule.cycles(n, activity_mbq=activity, ligand_nmol=ligand, interval_h=interval, tracer=name)
    except pbpk.UnknownTracerError as err:
        raise ConfigError(f"{where} key 'tracer': {err}") from None
    except pbpk.PBPKError as err:
        raise ConfigError(f"{where}: {err}") from None


def read_toml(path) -> dict:
    """Parse a TOML file (ConfigError naming the file when missing, unreadable or invalid)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config file ({err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
