"""Virtual trials: N virtual patients x a set of therapy schedules -> region TIA, mean
absorbed dose and BED per patient and schedule, written in chunks to Parquet.

Config (TOML)::

    [trial]
    patients = 1000            # N
    seed = 7                   # the same seed gives the same table, wherever it runs
    chunk_size = 50            # patients per chunk (bounds memory and the compiled shapes)
    rtol = 1e-4                # solver tolerance (atol = rtol / 1000 of the dose), see below
    regions = ["kidneys", "salivary_glands", "red_marrow", "lesion_1"]   # optional

    [population]               # optional overrides of twin.population.Population.default()
    weight_kg = {distribution = "lognormal", median = 85.0, sd_log = 0.18}

    [[schedules]]              # one or more; keys as in the `twin` command-line config
    name = "VISION 6 x 7.4 GBq"
    cycles = 6
    activity_mbq = 7400.0
    ligand_nmol = 100.0
    interval_h = 1008.0
    tracer = "Lu-177-PSMA-617"

    [limits]                   # optional; default twin.limits.DEFAULT_LIMITS
    kidneys = {bed_gy = 28.0}

Model per patient: `pbpk.psma_model` with the schedules' tracers and the patient's lesion
count, every sampled covariate applied as a parameter override
(`twin.population.patient_parameters`); schedules that differ from another only by a
common factor on their activities (same times and ligand amounts) are not solved again but
scaled (`twin.outcomes.activity_multiples`: hot and cold ligand share their kinetics in
`pbpk.psma_model`); one model per lesion count, a chunk's patients of
one lesion count solved together in lockstep, padded to the next power of two (at most
`chunk_size`; `padded_rows`), so every chunk reuses a few compiled solves.  Dose: self-dose of
the non-penetrating energy with the patient's own region masses
(`twin.maps.self_dose_operator` at the reference volumes, scaled per patient by reference
/ patient volume); BED with the Lea-Catcheside factor of the simulated dose rate
(`twin.outcomes.outcome_arrays`).

Solver tolerance: trials default to rtol = 1e-4 (pbpk default 1e-6), 3x faster; on a
6-cycle 7.4 GBq schedule (2 lesions) the region TIA changes by 2e-6 and the sampled
activities (dose rates of the BED) by 1e-3 relative (`benchmarks/bench_trial.py` notes).

Output folder: ``trial.json`` (the config that made it; a rerun with another config is
refused), ``patients/`` (one row per patient: covariates), ``outcomes/`` (one row per
patient, schedule and region: tia_mbq_h, dose_gy, bed_gy, solver_ok), both Parquet
datasets in parts (`twin.runner`), then ``summary.csv``, ``exceedance.csv`` and two plots
(`twin.trial_summary`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import jax
import numpy as np
import pandas as pd

import pbpk
from pbpk.compile import compile_model

from . import runner, trial_summary
from .configs import integer, no_unknown, number, read_toml, schedule, table
from .errors import ConfigError, TwinError
from .limits import DEFAULT_LIMITS, Limit, limits_from_mapping
from .maps import self_dose_operator
from .outcomes import bucket_size, outcome_arrays, schedule_nuclide
from .patient import default_radiobiology
from .population import Population, patient_parameters

SOLVE_IN_LOCKSTEP = True
"""A chunk's patients of one lesion count are solved in lockstep (`pbpk.batch.solve_batch_lockstep`)
at any group size: 1.7x the vmapped rate with 4 and 8 rows, 1.6x with 32 (2-core CPU,
`benchmarks/bench_trial.py --draws compare`)."""

MANIFEST = "trial.json"
TABLES = ("patients", "outcomes")
DEFAULT_REGIONS = ("kidneys", "salivary_glands", "red_marrow", "liver", "spleen", "tumour_rest")
"""Dose regions reported by default (plus every lesion): the organs at risk of PSMA therapy
(`twin.limits.DEFAULT_LIMITS`), liver and spleen, and the tumour burden."""
_TOP_KEYS = ("trial", "population", "schedules", "limits")
_TRIAL_KEYS = ("patients", "seed", "chunk_size", "regions", "rtol")
DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class TrialConfig:
    """A validated trial (see module doc).  `schedule_specs` keeps the config's tables so
    the trial can be written back (`to_dict`) and sent to workers as plain data."""

    n_patients: int
    seed: int
    chunk_size: int
    population: Population
    schedule_specs: Mapping[str, Mapping]
    regions: tuple[str, ...] | None
    limits: tuple[Limit, ...]
    rtol: float = DEFAULT_RTOL

    @property
    def solver_options(self) -> pbpk.SolverOptions:
        return pbpk.SolverOptions(rtol=self.rtol, atol=self.rtol * 1e-3)

    @property
    def schedules(self) -> dict[str, pbpk.Schedule]:
        return {name: schedule(spec, f"schedule {name!r}") for name, spec in self.schedule_specs.items()}

    @property
    def n_chunks(self) -> int:
        return -(-self.n_patients // self.chunk_size)

    @property
    def tracers(self) -> tuple[str, ...]:
        return tuple(sorted({a.tracer.name for s in self.schedules.values() for a in s}))

    def to_dict(self) -> dict:
        """JSON/TOML-safe mapping that `from_dict` reads back to an equal config."""
        trial = {"patients": self.n_patients, "seed": self.seed, "chunk_size": self.chunk_size, "rtol": self.rtol}
        if self.regions is not None:
            trial["regions"] = list(self.regions)
        limits: dict = {}
        for lim in self.limits:
            limits.setdefault(lim.region, {})[lim.quantity] = lim.value
        return {"trial": trial, "population": self.population.to_dict(),
                "schedules": [{"name": n, **dict(s)} for n, s in self.schedule_specs.items()], "limits": limits}

    @classmethod
    def from_dict(cls, doc: Mapping, where: str = "trial config") -> "TrialConfig":
        """Validate everything before any work: unknown keys, covariates and tracers,
        impossible distributions, schedules of mixed nuclides, unknown regions."""
        no_unknown(table(doc, where), _TOP_KEYS, f"{where} (top level)")
        t = table(doc.get("trial", {}), f"{where} [trial]")
        no_unknown(t, _TRIAL_KEYS, f"{where} [trial]")
        if "patients" not in t:
            raise ConfigError(f"{where} [trial]: key 'patients' missing; expected the number of virtual patients")
        n = integer(t["patients"], f"{where} [trial] key 'patients'")
        seed = integer(t.get("seed", 0), f"{where} [trial] key 'seed'", minimum=0)
        chunk = integer(t.get("chunk_size", 50), f"{where} [trial] key 'chunk_size'")
        rtol = number(t.get("rtol", DEFAULT_RTOL), f"{where} [trial] key 'rtol'")
        if not rtol <= 1e-2:
            raise ConfigError(f"{where} [trial] key 'rtol': {rtol!r}; expected a tolerance in (0, 0.01]")
        population = Population.from_dict(doc.get("population", {}), f"{where} [population]")

        raw = doc.get("schedules")
        if not isinstance(raw, list) or not raw or not all(isinstance(s, Mapping) for s in raw):
            raise ConfigError(f"{where} [[schedules]]: expected one or more tables with name, cycles, activity_mbq, ...")
        specs: dict[str, dict] = {}
        for k, spec in enumerate(raw, start=1):
            sw = f"{where} [[schedules]] #{k}"
            name = spec.get("name")
            if not isinstance(name, str) or not name.strip() or name in specs:
                raise ConfigError(f"{sw} key 'name': {name!r}; expected a unique non-empty string")
            body = {key: v for key, v in spec.items() if key != "name"}
            schedule(body, sw)  # validates keys, numbers and the tracer now
            specs[name] = body
        nuclides = {name: schedule_nuclide(schedule(s, name)) for name, s in specs.items()}
        if len(set(nuclides.values())) != 1:
            raise ConfigError(f"{where} [[schedules]]: schedules give nuclides {nuclides}; a trial compares "
                              "schedules of one therapy nuclide")

        regions = None
        if "regions" in t:
            regions = t["regions"]
            if not isinstance(regions, list) or not regions or not all(isinstance(r, str) for r in regions):
                raise ConfigError(f"{where} [trial] key 'regions': {regions!r}; expected a list of region names")
            model = pbpk.psma_model(tuple(sorted({a.tracer.name for s in specs.values()
                                                  for a in schedule(s, 'schedule')})),
                                    lesion_volumes_ml=(10.0,) * population.max_lesions)
            bad = sorted(set(regions) - set(model.region_names) | set(regions) & {"whole_body", "urine"})
            if bad:
                raise ConfigError(f"{where} [trial] key 'regions': {bad} are not dose regions of the PSMA model "
                                  f"(up to {population.max_lesions} lesions); expected some of "
                                  f"{[r for r in model.region_names if r not in ('whole_body', 'urine')]}")
            regions = tuple(regions)
        limits = DEFAULT_LIMITS
        if "limits" in doc:
            try:
                limits = limits_from_mapping(table(doc["limits"], f"{where} [limits]"))
            except TwinError as err:
                raise ConfigError(f"{where} [limits]: {err}") from None
        return cls(n, seed, chunk, population, specs, regions, tuple(limits), rtol)


def load_trial_config(path) -> TrialConfig:
    """Read and validate a trial TOML (ConfigError naming the file and key)."""
    return TrialConfig.from_dict(read_toml(path), str(path))


# ----------------------------------------------------------------------------- one chunk
@dataclass
class _Evaluator:
    """What one worker process keeps per (tracers, lesion count): the model, the names of
    the per-patient parameters, the reference self-dose operator, the patients' region
    volumes (mL, jitted over a chunk) against the reference ones, and the jit caches."""

    model: pbpk.Model
    names: tuple[str, ...]
    regions: tuple[str, ...]
    operator: object
    radiobiology: dict
    volumes: Callable
    reference_ml: np.ndarray
    cache: dict

    @property
    def parameters_default(self) -> list[float]:
        """The model's default values of `names` (a stand-in when no patient is valid)."""
        return [self.model.parameter(n).value for n in self.names]

    def parameters(self, theta) -> dict:
        return {n: theta[k] for k, n in enumerate(self.names)}


@functools.lru_cache(maxsize=16)
def _evaluator(tracers: tuple[str, ...], n_lesions: int, names: tuple[str, ...],
               regions: tuple[str, ...] | None) -> _Evaluator:
    model = pbpk.psma_model(tracers, lesion_volumes_ml=(10.0,) * n_lesions)
    lesions = tuple(r for r in model.region_names if r.startswith("lesion_"))
    wanted = (DEFAULT_REGIONS + lesions) if regions is None else regions
    dose_regions = tuple(r for r in wanted if r in model.region_names)
    nuclides = sorted({pbpk.tracer(t).nuclide for t in tracers})
    reference_ml = pbpk.region_volumes_ml(model)
    operator = self_dose_operator(model.region_names, nuclides[0], reference_ml, dose_regions)
    compiled = compile_model(model)
    index = [model.region_names.index(r) for r in dose_regions]

    def volumes_ml(theta):
        p = compiled.parameter_vector({n: theta[k] for k, n in enumerate(names)})
        return compiled.region_volumes_l(p, compiled.assignments(p))[np.array(index)] * 1000.0

    return _Evaluator(model, names, dose_regions, operator, default_radiobiology(dose_regions),
                      jax.jit(jax.vmap(volumes_ml)), np.array([reference_ml[r] for r in dose_regions]), {})


@functools.lru_cache(maxsize=4)
def _parsed(config_json: str) -> TrialConfig:
    """The config of `trial_chunk`, validated once per process (validation builds a model
    when the config names regions), not once per chunk."""
    return TrialConfig.from_dict(json.loads(config_json))


def trial_chunk(config: Mapping, chunk: int) -> dict[str, pd.DataFrame]:
    """The `patients` and `outcomes` tables of chunk `chunk` of the trial `config` (a
    `TrialConfig.to_dict()`; plain data, so it travels to Dask workers).  Patients of one
    lesion count are solved together, padded to `padded_rows` rows (a few compiled shapes)."""
    cfg = _parsed(json.dumps(config, sort_keys=True))
    first = chunk * cfg.chunk_size
    ids = np.arange(first, min(first + cfg.chunk_size, cfg.n_patients))
    patients = cfg.population.sample(cfg.seed, ids)
    schedules = cfg.schedules
    frames = []
    problems = pd.Series("", index=patients.index, dtype=object)
    for n_lesions, group in patients.groupby("n_lesions", sort=True):
        rows = [patient_parameters(r) for r in group.to_dict("records")]
        names = tuple(sorted(rows[0]))
        ev = _evaluator(cfg.tracers, int(n_lesions), names, cfg.regions)
        theta = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
        invalid = _invalid_patients(ev, theta)
        problems[group.index] = invalid
        valid = np.array([not msg for msg in invalid])
        # invalid patients (e.g. a lesion burden that leaves no rest-of-body flow) and the
        # padding rows are solved with a valid patient's parameters, then blanked
        stand_in = theta[np.argmax(valid)] if valid.any() else np.asarray(ev.parameters_default)
        theta[~valid] = stand_in
        rows_solved = padded_rows(len(theta), cfg.chunk_size)
        padded = np.concatenate([theta, np.repeat(stand_in[None, :], rows_solved - len(theta), axis=0)])
        ratio = ev.reference_ml / np.asarray(ev.volumes(padded))  # self-dose scales with 1 / mass
        out = outcome_arrays(ev.model, ev.parameters, padded, schedules, ev.operator, ev.radiobiology,
                             dose_scale=ratio, options=cfg.solver_options, cache=ev.cache,
                             lockstep=SOLVE_IN_LOCKSTEP and cfg.solver_options.method == "rodas4",
                             scale_activity=True, pad_schedules=False)
        frames.append(_tidy(group["patient_id"].to_numpy(), out, ev, valid))
    outcomes = pd.concat(frames, ignore_index=True).sort_values(["patient_id", "schedule", "region"], kind="stable")
    return {"patients": patients.assign(model_error=problems), "outcomes": outcomes.reset_index(drop=True)}


def padded_rows(n_patients: int, chunk_size: int) -> int:
    """Rows solved for a chunk's `n_patients` of one lesion count: the next power of two,
    at most `chunk_size` (`twin.outcomes.bucket_size`).  A chunk of C patients split over K
    lesion counts then solves fewer than 2 C rows (padding every group to C solved K C), at
    the cost of at most log2(C) + 1 compiled shapes per lesion count instead of one."""
    return min(bucket_size(n_patients), chunk_size)


def _invalid_patients(ev: _Evaluator, theta: np.ndarray) -> list[str]:
    """Per patient: "" when its parameters are valid for the model (bounds, positive
    volumes and flows: `CompiledModel.check_parameters`), else the reason.  The parameter
    vectors are set in numpy (`CompiledModel.parameter_vectors`; JAX's per-row updates cost
    a third of a chunk's time)."""
    compiled = compile_model(ev.model)
    out = []
    for p in compiled.parameter_vectors(ev.names, theta):
        try:
            compiled.check_parameters(p)
            out.append("")
        except pbpk.ParameterError as err:
            out.append(str(err))
    return out


def _tidy(patient_ids: np.ndarray, out, ev: _Evaluator, valid: np.ndarray) -> pd.DataFrame:
    """Long table (patient, schedule, dose region) from padded outcome arrays; patients
    that are not `valid` get NaN outcomes and solver_ok False."""
    n, n_s, n_r = len(patient_ids), len(out.schedule_names), len(ev.regions)
    blank = np.where(valid, 1.0, np.nan)[:, None, None]
    tia_index = [ev.model.region_names.index(r) for r in ev.regions]
    return pd.DataFrame({
        "patient_id": np.repeat(patient_ids, n_s * n_r),
        "schedule": np.tile(np.repeat(np.array(out.schedule_names, dtype=object), n_r), n),
        "region": np.tile(np.array(ev.regions, dtype=object), n * n_s),
        "tia_mbq_h": (out.tia_mbq_h[:n][:, :, tia_index] * blank).reshape(-1),
        "dose_gy": (out.dose_gy[:n] * blank).reshape(-1),
        "bed_gy": (out.bed_gy[:n] * blank).reshape(-1),
        "solver_ok": np.repeat(out.solver_ok[:n] & valid, n_s * n_r),
    })


# ----------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class TrialRun:
    """Where a trial was written and what the run did (`runner.RunStats`)."""

    folder: Path
    stats: runner.RunStats

    def outcomes(self) -> pd.DataFrame:
        return read_table(self.folder, "outcomes")

    def patients(self) -> pd.DataFrame:
        return read_table(self.folder, "patients")


def read_table(folder, name: str) -> pd.DataFrame:
    """A trial table (`patients` or `outcomes`) from its Parquet parts, sorted by patient."""
    keys = ["patient_id", "schedule", "region"] if name == "outcomes" else ["patient_id"]
    return runner.read_parts(folder, name, keys, "trial")


def run_trial(config: TrialConfig, folder, *, client=None, force: bool = False,
              progress: Callable[[int, int], None] | None = None) -> TrialRun:
    """Run (or resume) the trial into `folder`: every chunk not yet on disk, in-process or
    on `client` (`twin.runner`); the same config gives the same tables either way.
    Raises TwinError naming the chunks that failed (a rerun retries only those)."""
    folder = runner.prepare_folder(folder, MANIFEST, config.to_dict(), force=force)
    task = functools.partial(trial_chunk, config.to_dict())
    stats = runner.run_parts(task, range(config.n_chunks), folder, TABLES, client=client, name="trial-chunk",
                             progress=progress)
    if stats.failed:
        raise TwinError(f"{folder}: {len(stats.failed)} chunk(s) failed (rerun to retry them): "
                        + "; ".join(f"chunk {k}: {msg}" for k, msg in sorted(stats.failed.items())[:5]))
    plotted = list(dict.fromkeys([lim.region for lim in config.limits] + ["lesion_1"]))
    trial_summary.write_summary(folder, config.limits, plotted)
    return TrialRun(folder, stats)
