"""twin.optimise / twin.limits against a fake twin with analytic outcomes (no ODE solves).

Fake model: per-cycle dose of region r in draw d is D1 = A * c_{d,r} * u_r(L) (Gy; A the
per-cycle activity in MBq, c lognormal with a fixed seed, u_r a ligand factor); n cycles
fully repaired between cycles give
    dose = n D1,   BED = n D1 (1 + g_r D1 / (alpha/beta)_r).
With N = 401 draws and p = 0.95, (N - 1) p = 380 is an integer, so numpy's p-quantile is the
order statistic c_(380) and, BED being increasing in c, the constraint boundary is closed form:
    dose limit  Lim:  A* = Lim / (n c_(380) u),
    BED limit   Lim:  x = (-1 + sqrt(1 + 4 k Lim / n)) / (2 k),  k = g/ab,  A* = x / (c_(380) u).
"""

import math

import numpy as np
import pandas as pd
import pytest

import pbpk
from twin.errors import TwinError
from twin.limits import DEFAULT_LIMITS, Limit, limits_for_regions, limits_from_mapping
from twin.optimise import optimise_schedule
from twin.outcomes import Outcomes, activity_multiples

N_DRAWS = 401
P = 0.95
ORDER = 380  # (N_DRAWS - 1) * P
REGIONS = ("kidneys", "red_marrow", "salivary_glands", "lesion_1", "lesion_2")
# (median Gy/GBq per cycle, lognormal sigma, g/(alpha/beta) in 1/Gy or None for no LQ parameters)
LQ_K = {"kidneys": 0.3 / 2.6, "red_marrow": 0.5 / 15.0, "salivary_glands": None, "lesion_1": 0.2 / 10.0,
        "lesion_2": 0.2 / 10.0}


def make_schedule(activity_mbq, ligand_nmol, interval_h, n_cycles):
    return pbpk.Schedule.cycles(n_cycles, activity_mbq, ligand_nmol, interval_h or 1008.0)


class FakeTwin:
    """evaluate({name: Schedule}) -> Outcomes of the analytic model in the module doc."""

    def __init__(self, medians_gy_per_gbq, sigma=0.3, seed=7, ligand_factor=None):
        rng = np.random.default_rng(seed)
        self.coef = {r: medians_gy_per_gbq[r] / 1000.0 * np.exp(sigma * rng.standard_normal(N_DRAWS))
                     for r in REGIONS}  # Gy/MBq per cycle
        self.ligand_factor = ligand_factor or (lambda region, ligand: 1.0)
        self.calls = []

    def per_cycle(self, region, activity, ligand):
        return activity * self.coef[region] * self.ligand_factor(region, ligand)

    def arrays(self, activity, ligand, n):
        dose, bed = [], []
        for r in REGIONS:
            d1 = self.per_cycle(r, activity, ligand)
            dose.append(n * d1)
            bed.append(np.full(N_DRAWS, np.nan) if LQ_K[r] is None else n * d1 * (1 + LQ_K[r] * d1))
        return np.stack(dose, axis=1), np.stack(bed, axis=1)

    @staticmethod
    def parse(schedule):
        a = schedule.administrations
        return a[0].activity_mbq, a[0].ligand_nmol, len(a)

    def __call__(self, schedules):
        self.calls.append(len(schedules))
        names = tuple(schedules)
        dose, bed = zip(*(self.arrays(*self.parse(schedules[n])) for n in names))
        dose, bed = np.stack(dose, axis=1), np.stack(bed, axis=1)
        return Outcomes(names, REGIONS, REGIONS, np.zeros_like(dose), dose, bed, 0.0)

    def analytic_activity(self, limit, n, ligand=None):
        """Closed-form largest activity with p-quantile == limit (module doc)."""
        c = np.sort(self.coef[limit.region])[ORDER] * self.ligand_factor(limit.region, ligand)
        if limit.quantity == "dose_gy":
            return limit.value / (n * c)
        k = LQ_K[limit.region]
        return (-1.0 + math.sqrt(1.0 + 4.0 * k * limit.value / n)) / (2.0 * k) / c

    def lesion_target(self, activity, n, ligand=None):
        return min(float(np.median(self.arrays(activity, ligand, n)[1][:, j])) for j in (3, 4))


KIDNEY = Limit("kidneys", "bed_gy", 40.0, "test")
MARROW = Limit("red_marrow", "dose_gy", 2.0, "test")
SALIVA = Limit("salivary_glands", "dose_gy", 25.0, "test")
LIMITS = (KIDNEY, MARROW, SALIVA)
LO, HI, GRID, STEPS = 1000.0, 12000.0, 9, 2
FINAL_SPACING = (HI - LO) / (GRID - 1) / (GRID + 1) ** STEPS


def kidney_bound_twin():
    return FakeTwin({"kidneys": 0.8, "red_marrow": 0.02, "salivary_glands": 0.5, "lesion_1": 5.0, "lesion_2": 3.0})


def marrow_bound_twin():
    return FakeTwin({"kidneys": 0.4, "red_marrow": 0.08, "salivary_glands": 0.5, "lesion_1": 5.0, "lesion_2": 3.0})


def run(twin, **kw):
    options = dict(activities_mbq=(LO, HI), n_cycles=(4,), limits=LIMITS, probability=P, grid_points=GRID,
                   refine_steps=STEPS)
    options.update(kw)
    return optimise_schedule(twin, make_schedule, **options)


def independent_quantiles(twin, schedule):
    """p-quantile of each limit's quantity, recomputed directly from the fake model."""
    dose, bed = twin.arrays(*twin.parse(schedule))
    arrays = {"dose_gy": dose, "bed_gy": bed}
    return {lim.label: float(np.quantile(arrays[lim.quantity][:, REGIONS.index(lim.region)], P)) for lim in LIMITS}


@pytest.mark.parametrize("case, binding", [("kidney", KIDNEY), ("marrow", MARROW)])
def test_optimum_feasible_near_analytic_and_binding(case, binding):
    twin = kidney_bound_twin() if case == "kidney" else marrow_bound_twin()
    n = 4
    analytic = {lim.label: twin.analytic_activity(lim, n) for lim in LIMITS}
    # the case is constructed so that `binding` is the tightest limit, inside the activity range
    assert min(analytic, key=analytic.get) == binding.label
    a_star = analytic[binding.label]
    assert LO < a_star < HI
    # the closed form really is the boundary: quantile at a_star equals the limit (independent check)
    q_star = independent_quantiles(twin, make_schedule(a_star, None, None, n))[binding.label]
    assert q_star == pytest.approx(binding.value, rel=1e-9)

    result = run(twin)
    # feasible at the requested probability, recomputed independently
    q = independent_quantiles(twin, result.schedule)
    for lim in LIMITS:
        assert q[lim.label] <= lim.value
    # within the final grid spacing below the analytic optimum
    assert a_star - FINAL_SPACING <= result.activity_mbq <= a_star
    assert result.binding == binding.label
    assert result.n_cycles == n and result.schedule.administrations[0].activity_mbq == result.activity_mbq
    # constraints table: the quantiles, satisfied flags and one binding row
    table = result.constraints.set_index(result.constraints.region + " " + result.constraints.quantity)
    for lim in LIMITS:
        assert table.loc[lim.label, "probability_quantile_value"] == pytest.approx(q[lim.label], rel=1e-12)
        assert table.loc[lim.label, "limit_gy"] == lim.value
        assert bool(table.loc[lim.label, "satisfied"])
    assert table["binding"].sum() == 1 and bool(table.loc[binding.label, "binding"])
    assert table.loc[binding.label, "ratio"] > 0.9
    # target: the lesion with the lower median BED (lesion_2 has the smaller coefficient)
    assert result.target_region == "lesion_2"
    assert result.target_bed_gy_median == pytest.approx(twin.lesion_target(result.activity_mbq, n), rel=1e-12)


def test_vectorised_one_call_per_step_and_candidate_table():
    twin = kidney_bound_twin()
    cycles = (2, 3, 4)
    result = run(twin, n_cycles=cycles)
    # one evaluate call for the grid of every combination, then one per refinement step
    assert twin.calls == [GRID * len(cycles)] + [GRID * len(cycles)] * STEPS
    cand = result.candidates
    assert cand.attrs["evaluate_calls"] == 1 + STEPS
    assert len(cand) == sum(twin.calls)
    assert list(cand.groupby("step").size()) == twin.calls
    step0 = cand[cand.step == 0]
    for n in cycles:
        np.testing.assert_allclose(np.sort(step0[step0.n_cycles == n].activity_mbq), np.linspace(LO, HI, GRID))
    # every row recomputed independently: quantiles, feasibility, target
    for _, row in cand.iterrows():
        schedule = make_schedule(row.activity_mbq, None, None, row.n_cycles)
        q = independent_quantiles(twin, schedule)
        for lim in LIMITS:
            assert row[f"q_{lim.region}_{lim.quantity}"] == pytest.approx(q[lim.label], rel=1e-12)
        assert row.feasible == all(q[lim.label] <= lim.value for lim in LIMITS)
        assert row.target_bed_gy_median == pytest.approx(twin.lesion_target(row.activity_mbq, row.n_cycles),
                                                         rel=1e-12)
    # refinement points of each step lie strictly inside the previous bracket
    for n in cycles:
        sub = cand[cand.n_cycles == n]
        for step in range(1, STEPS + 1):
            before = sub[sub.step < step]
            first_bad = before[~before.feasible].activity_mbq.min()
            last_good = before[before.feasible & (before.activity_mbq < first_bad)].activity_mbq.max()
            new = sub[sub.step == step].activity_mbq
            assert ((new > last_good) & (new < first_bad)).all()
    # the chosen row is the feasible one with the largest target, and it is the result
    feasible = cand[cand.feasible]
    chosen = cand[cand.chosen]
    assert len(chosen) == 1
    assert chosen.target_bed_gy_median.iloc[0] == feasible.target_bed_gy_median.max()
    assert chosen.activity_mbq.iloc[0] == result.activity_mbq and chosen.n_cycles.iloc[0] == result.n_cycles
    # analytic best over the cycle counts (kidney BED limits total dose less with more fractions)
    best_n = max(cycles, key=lambda n: twin.lesion_target(
        min(twin.analytic_activity(lim, n) for lim in LIMITS), n))
    assert result.n_cycles == best_n
    a_star = min(twin.analytic_activity(lim, best_n) for lim in LIMITS)
    assert a_star - FINAL_SPACING <= result.activity_mbq <= a_star


def test_ligand_combinations_pick_the_better_ligand():
    # more cold ligand protects the kidneys more than it lowers lesion uptake (made-up factors)
    def factor(region, ligand):
        return {"kidneys": 100.0 / ligand, "lesion_1": 1.0, "lesion_2": 1.0}.get(region, 1.0) if ligand else 1.0

    twin = FakeTwin({"kidneys": 0.8, "red_marrow": 0.02, "salivary_glands": 0.5, "lesion_1": 5.0, "lesion_2": 3.0},
                    ligand_factor=factor)
    result = run(twin, ligand_nmol=(100.0, 200.0), n_cycles=(4,))
    assert twin.calls[0] == 2 * GRID
    assert result.ligand_nmol == 200.0
    a_star = min(twin.analytic_activity(lim, 4, 200.0) for lim in LIMITS)
    assert a_star - FINAL_SPACING <= result.activity_mbq <= a_star
    assert all(a.ligand_nmol == 200.0 for a in result.schedule)


def test_no_binding_when_upper_bound_is_far_from_limits():
    twin = kidney_bound_twin()
    result = run(twin, activities_mbq=(500.0, 3000.0))
    assert result.activity_mbq == 3000.0
    assert result.binding is None and not result.constraints.binding.any()
    assert (result.constraints.ratio < 0.9).all()
    assert twin.calls == [GRID]  # nothing to refine: no evaluate call beyond the grid


def test_binding_by_ratio_when_upper_bound_is_near_a_limit():
    twin = kidney_bound_twin()
    hi = 0.97 * twin.analytic_activity(KIDNEY, 4)
    q = independent_quantiles(twin, make_schedule(hi, None, None, 4))
    ratios = {lim.label: q[lim.label] / lim.value for lim in LIMITS}
    assert ratios["kidneys bed_gy"] > 0.9 and max(ratios, key=ratios.get) == "kidneys bed_gy"
    assert all(r < 0.9 for label, r in ratios.items() if label != "kidneys bed_gy")
    result = run(twin, activities_mbq=(LO, hi))
    assert result.activity_mbq == pytest.approx(hi, rel=1e-12)
    assert result.binding == "kidneys bed_gy"
    assert list(result.constraints.binding) == [True, False, False]


def test_infeasible_names_failing_limit():
    twin = marrow_bound_twin()
    lo = 5000.0
    q = independent_quantiles(twin, make_schedule(lo, None, None, 4))
    failing = {lim.label for lim in LIMITS if q[lim.label] > lim.value}
    assert failing == {"red_marrow dose_gy"}  # the case: only marrow fails at the lowest activity
    with pytest.raises(TwinError, match="red_marrow dose_gy") as err:
        run(twin, activities_mbq=(lo, 7000.0))
    assert "5000 MBq" in str(err.value) and "kidneys" not in str(err.value)
    assert f"{q['red_marrow dose_gy']:.4g} Gy" in str(err.value)


def test_region_target_and_errors():
    twin = kidney_bound_twin()
    result = run(twin, target="lesion_1")
    assert result.target_region == "lesion_1"
    assert result.target_bed_gy_median == pytest.approx(
        float(np.median(twin.arrays(result.activity_mbq, None, 4)[1][:, 3])), rel=1e-12)
    with pytest.raises(TwinError, match="bladder"):
        run(twin, limits=LIMITS + (Limit("bladder", "dose_gy", 10.0, "test"),))
    # filtering by the caller removes it
    assert limits_for_regions(LIMITS + (Limit("bladder", "dose_gy", 10.0, "test"),), REGIONS) == LIMITS
    with pytest.raises(TwinError, match="salivary_glands"):  # BED limit on a region without LQ parameters
        run(twin, limits=(Limit("salivary_glands", "bed_gy", 30.0, "test"),))
    with pytest.raises(TwinError, match="salivary_glands"):  # target BED NaN
        run(twin, target="salivary_glands")
    with pytest.raises(TwinError, match="liver"):
        run(twin, target="liver")
    with pytest.raises(TwinError, match="activities_mbq"):
        run(twin, activities_mbq=(5000.0, 1000.0))
    with pytest.raises(TwinError, match="n_cycles"):
        run(twin, n_cycles=(0,))
    with pytest.raises(TwinError, match="probability"):
        run(twin, probability=1.0)
    with pytest.raises(TwinError, match="two limits"):
        run(twin, limits=(KIDNEY, KIDNEY))


def test_lesions_target_needs_lesion_regions():
    twin = kidney_bound_twin()

    def no_lesions(schedules):
        out = twin(schedules)
        return Outcomes(out.schedule_names, REGIONS, ("kidneys", "red_marrow", "salivary_glands", "liver", "spleen"),
                        out.tia_mbq_h, out.dose_gy, out.bed_gy, 0.0)

    with pytest.raises(TwinError, match="lesion"):
        optimise_schedule(no_lesions, make_schedule, activities_mbq=(LO, HI), limits=LIMITS)


def test_default_limits_and_mapping():
    by_label = {lim.label: lim for lim in DEFAULT_LIMITS}
    assert by_label["kidneys bed_gy"].value == 40.0 and "Bodei" in by_label["kidneys bed_gy"].source
    assert by_label["red_marrow dose_gy"].value == 2.0 and "Benua" in by_label["red_marrow dose_gy"].source
    assert by_label["salivary_glands dose_gy"].value == 25.0
    assert "Deasy" in by_label["salivary_glands dose_gy"].source
    assert limits_from_mapping({"kidneys": {"bed_gy": 28}, "red_marrow": {"dose_gy": 1.5}}) == (
        Limit("kidneys", "bed_gy", 28.0, "user-supplied limit"), Limit("red_marrow", "dose_gy", 1.5,
                                                                       "user-supplied limit"))
    with pytest.raises(TwinError, match=r"limits\['kidneys'\]\['eqd2_gy'\]"):
        limits_from_mapping({"kidneys": {"eqd2_gy": 28}})
    with pytest.raises(TwinError, match=r"limits\['red_marrow'\]\['dose_gy'\] = -2"):
        limits_from_mapping({"red_marrow": {"dose_gy": -2}})
    with pytest.raises(TwinError, match=r"limits\['kidneys'\]"):
        limits_from_mapping({"kidneys": 28})
    with pytest.raises(TwinError, match="quantity"):
        Limit("kidneys", "dose", 1.0, "x")
    assert isinstance(run(kidney_bound_twin(), limits=DEFAULT_LIMITS).constraints, pd.DataFrame)


def test_activity_multiples_need_the_same_times_tracers_and_ligand_amounts():
    """Schedules scaled from an earlier one: same times, tracers and ligand amounts, every
    activity times one factor; carrier-free schedules (total ligand follows the activity)
    and other ligand amounts, times or activity ratios are solved themselves."""
    def two(a1, a2, nmol=100.0, gap=1008.0):
        return pbpk.Schedule([pbpk.Administration(0.0, a1, nmol), pbpk.Administration(gap, a2, nmol)])

    schedules = [two(7400.0, 6000.0), two(3700.0, 3000.0), two(7400.0, 7400.0), two(3700.0, 3700.0),
                 two(3700.0, 3000.0, nmol=50.0), two(3700.0, 3000.0, gap=1200.0), two(3700.0, 3000.0, nmol=None),
                 two(7400.0, 6000.0, nmol=None), two(11100.0, 9000.0)]
    assert activity_multiples(schedules) == [(0, 1.0), (0, 0.5), (2, 1.0), (2, 0.5), (4, 1.0), (5, 1.0), (6, 1.0),
                                             (7, 1.0), (0, 1.5)]
