"""The whole-body PSMA radioligand PBPK model (Ulm model family).

Structure after Kletting P et al. PLoS One 2016;11:e0162303, Begum NJ et al. J Nucl Med
2018;59:929 and Sci Rep 2019;9:20041, Rinscheid A et al. EJNMMI Phys 2020
(doi:10.1186/s40658-020-00311-0), in the form re-published by Fele-Paranj A et al.
EJNMMI Radiopharm Chem 2024;9:6 (public SBML ``qurit/PyCNO: src/pycno/models/PSMA.sbml``;
"PyCNO" below).  Time in h, amounts nmol,
volumes L, flows L/h.

Circulation: venous plasma -> lungs (whole cardiac plasma output F) -> arterial plasma ->
parallel organs -> venous plasma; spleen and GI drain into the liver vascular space.
Every tissue has a vascular (plasma) and an interstitial space exchanging by a
permeability-surface product PS = kPS * V_tissue (brain: vascular only).  Receptor-
positive tissues add receptor-bound and internalised pools; the total receptor
R0 = Rden * V_tissue is conserved (free receptor R0 - sum of bound ligand, all forms).
Kidneys: glomerular filtration GFR_eff = phi * GFR of the unbound plasma fraction into a
tubular space carrying the receptors; a fraction f_exc of the tubular flow goes to urine,
the rest returns to blood through a reabsorption space.

Ligand forms: for each tracer a hot species (labelled with its nuclide) and for each
ligand a cold species, in every compartment.  All forms compete for the same receptors;
physical decay turns hot into cold of the same ligand everywhere (urine included).
Internalised ligand is released back into the interstitium at rate lambda_rel.

Where the defaults differ from the papers (see `DEFAULTS_NOTES`):
* flows are balanced: the rest-of-body plasma flow is F minus all other flows, tumours
  included (PyCNO adds tumour flows on top of F);
* 177Lu decay constant from ICRP-107 (PyCNO uses 7.15e-5 /min instead of 7.24e-5);
* the reabsorption return divides by the reabsorption volume (PyCNO divides by the
  internalised-compartment placeholder volume);
* glomerular filtration acts on the unbound plasma fraction (protein binding, which
  Rinscheid 2020 lists as a mechanism; PyCNO encodes it as albumin reactions switched off);
* the kidney receptor density and the salivary volume are re-set so that 7.4 GBq
  177Lu-PSMA-617 gives clinical dose per activity (values and sources in DEFAULTS_NOTES).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import sympy as sp

from .builder import ModelBuilder
from .errors import ModelError
from .model import LogNormalPrior, Model, decay_parameter_name
from .tracers import PER_MIN, Tracer, tracer as _tracer

PYCNO = "Fele-Paranj A et al. EJNMMI Radiopharm Chem 2024;9:6, public SBML qurit/PyCNO PSMA.sbml"
BARTELINK = "Amsterdam PSMA-617 PBPK code, ibartelink/Target-Site-PBPK-in-oncology (Siebinga/Bartelink)"
ICRP89 = "ICRP Publication 89 (2002), reference adult male organ masses"


@dataclass(frozen=True)
class Tissue:
    """Row of the tissue table.

    volume_l: default total volume (L) at the reference body weight (71 kg) unless
    `fixed_volume`; vas/int: vascular and interstitial volumes, as functions of the
    tissue volume V, plasma volume Vp and haematocrit H; flow: plasma flow (L/h) as a
    function of F (cardiac plasma output, L/h) and V; kps_per_min: PS / V (1/min).
    """

    name: str
    volume_l: float
    vas: object
    int_: object
    flow: object
    kps_per_min: float
    receptor: bool = False
    fixed_volume: bool = False
    portal: bool = False
    source: str = PYCNO


# PyCNO tissue table (see module docstring for the full citation).  Receptor-negative
# tissues and liver/spleen/GI volumes are scaled by body weight / 71 kg as in PyCNO.
TISSUES: tuple[Tissue, ...] = (
    Tissue("liver", 1.8, lambda V, Vp, H: 0.085 * V, lambda V, Vp, H: 0.2 * V,
           lambda F, V: 0.065 * F, 2.0, receptor=True, fixed_volume=True,
           source=f"{PYCNO}; volume 1.8 L from {ICRP89} (1800 g)"),
    Tissue("spleen", 0.15, lambda V, Vp, H: 0.12 * V, lambda V, Vp, H: 0.2 * V,
           lambda F, V: 0.03 * F, 2.0, receptor=True, fixed_volume=True, portal=True,
           source=f"{PYCNO}; volume 0.15 L from {ICRP89} (150 g)"),
    Tissue("gi", 1.187, lambda V, Vp, H: 0.076 * Vp, lambda V, Vp, H: 0.174 * V,
           lambda F, V: 0.16 * F, 0.02, receptor=True, portal=True,
           source=f"{PYCNO}; interstitial 0.174 V from {BARTELINK} (PyCNO's 8.8 V_vas exceeds V)"),
    Tissue("prostate", 0.016, lambda V, Vp, H: 0.004 * (1 - H) * V, lambda V, Vp, H: 0.25 * V,
           lambda F, V: 0.18 * PER_MIN * V, 0.1, receptor=True),
    Tissue("red_marrow", 1.1, lambda V, Vp, H: 0.04 * Vp, lambda V, Vp, H: 3.7 * 0.04 * Vp,
           lambda F, V: 0.03 * F, 2.0),
    Tissue("muscle", 30.078, lambda V, Vp, H: 0.14 * Vp, lambda V, Vp, H: 5.9 * 0.14 * Vp,
           lambda F, V: 0.17 * F, 0.02),
    Tissue("skin", 3.408, lambda V, Vp, H: 0.03 * Vp, lambda V, Vp, H: 8.9 * 0.03 * Vp,
           lambda F, V: 0.05 * F, 0.02),
    Tissue("adipose", 13.465, lambda V, Vp, H: 0.05 * Vp, lambda V, Vp, H: 15.5 * 0.05 * Vp,
           lambda F, V: 0.05 * F, 0.02),
    Tissue("bone", 10.165 - 1.1, lambda V, Vp, H: 0.07 * Vp - 0.04 * Vp, lambda V, Vp, H: 8.4 * 0.03 * Vp,
           lambda F, V: 0.05 * F, 0.02),
    Tissue("heart", 0.341, lambda V, Vp, H: 0.01 * Vp, lambda V, Vp, H: 3.7 * 0.01 * Vp,
           lambda F, V: 0.04 * F, 0.02),
    Tissue("lungs", 1.0, lambda V, Vp, H: 0.105 * Vp, lambda V, Vp, H: 5.5 * 0.105 * Vp,
           None, 2.0),
)
# Brain: vascular space only, 0.012 Vp, flow 0.12 F, volume 1.45 L (PyCNO).
BRAIN = dict(volume_l=1.45, vas=lambda Vp: 0.012 * Vp, flow=lambda F: 0.12 * F)

REFERENCE_WEIGHT_KG = 71.0  # body weight of the PyCNO/Ulm tissue table

DEFAULTS_NOTES = """\
Defaults that differ from the published PBPK encodings, and why:
- kidneys_rden_nmol_l = 40 nmol/L (PyCNO 14, Amsterdam code 18): with the published
  densities 7.4 GBq 177Lu-PSMA-617 gives about 0.2 Gy/GBq to the kidneys, below the clinical
  0.5-0.82 Gy/GBq (Hohberg M et al. Mol Imaging Biol 2016;18:437: 0.53; Fendler WP et al.
  Oncotarget 2017;8:3581: 0.5/0.6; Kabasakal L et al. Mol Imaging Radionucl Ther
  2017;26:62: 0.82 +- 0.25) - the documented under-prediction of the public encoding.
- salivary_glands_volume_l = 0.085 L ({icrp}: parotid 50 + submandibular 25 + sublingual
  10 g) instead of PyCNO's 0.021 L, so that dose per activity uses the anatomical mass; the
  PyCNO receptor density 38 nmol/L is kept (gives 1.4 Gy/GBq; clinical 0.72-1.9: Hohberg
  2016, Fendler 2017, Kabasakal 2017).
- liver and spleen volumes from {icrp} (1.8 and 0.15 L) instead of PyCNO 1.91/0.183 L.
- glomerular filtration acts on the unbound plasma fraction fu (PyCNO has albumin binding
  switched off); fu(PSMA-617) = 0.25 gives 61 %% cumulative urinary excretion at 24 h, inside
  the 41.5-65.4 %% range of Kabasakal 2017, a blood elimination half-life of about 13 h
  (Kabasakal: 10.8 +- 2.5 h) and a kidney effective half-life of about 40 h (median 35.5 h
  in a 2026 SPECT series).
- gastrointestinal interstitial volume 0.174 V (Amsterdam code): PyCNO's 8.8 x V_vas
  exceeds the GI volume.
- flows are balanced (rest-of-body flow = F minus all organ and tumour flows).
Known limits of the defaults: liver (about 0.04 Gy/GBq) and spleen (about 0.035 Gy/GBq)
are below the roughly 0.1 Gy/GBq reported in some series (recalled values, not verified
here); their receptor densities are the published ones.
""".format(icrp=ICRP89)


def _tag(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()


def _form_tag(ligand: str, nuclide: str | None) -> str:
    return f"hot_{_tag(nuclide)}_{_tag(ligand)}" if nuclide else f"cold_{_tag(ligand)}"


def psma_model(
    tracers: Sequence[str | Tracer] = ("Lu-177-PSMA-617",),
    *,
    lesion_volumes_ml: Sequence[float] = (12.0, 50.0),
    lesion_rden_nmol_l: Sequence[float] | None = None,
    tumour_rest_volume_ml: float = 200.0,
    body_weight_kg: float = 73.0,
    height_cm: float = 176.0,
    haematocrit: float = 0.4,
    gfr_ml_min: float = 88.7,
    organ_volumes_ml: Mapping[str, float] | None = None,
) -> Model:
    """Build the whole-body PSMA PBPK model.

    tracers: the tracers this model can be dosed with (a hot species set per tracer, a cold
      set per ligand), e.g. ``("Ga-68-PSMA-11", "Lu-177-PSMA-617")`` for PET + therapy.
    lesion_volumes_ml: one entry per lesion (regions ``lesion_1``, ``lesion_2``, ...).
    lesion_rden_nmol_l: receptor density per lesion (nmol per L of tumour); default 50.
    organ_volumes_ml: volumes from imaging for any of kidneys, salivary_glands, liver,
      spleen, prostate, red_marrow, tumour_rest.
    Covariates (body weight, height, haematocrit, GFR) become parameter defaults and can
    be overridden per simulation like any parameter.
    """
    tracer_objs = tuple(_tracer(t) for t in tracers)
    if not tracer_objs:
        raise ModelError("psma_model: at least one tracer is needed")
    lesion_volumes_ml = tuple(float(v) for v in lesion_volumes_ml)
    if lesion_rden_nmol_l is None:
        lesion_rden_nmol_l = (50.0,) * len(lesion_volumes_ml)
    if len(lesion_rden_nmol_l) != len(lesion_volumes_ml):
        raise ModelError("psma_model: lesion_rden_nmol_l must have one entry per lesion volume")
    for i, v in enumerate(lesion_volumes_ml):
        if not v > 0:
            raise ModelError(f"psma_model: lesion_volumes_ml[{i}] = {v}; expected a positive volume in mL")
    organ_volumes_ml = dict(organ_volumes_ml or {})
    for k, v in organ_volumes_ml.items():
        if not v > 0:
            raise ModelError(f"psma_model: organ_volumes_ml[{k!r}] = {v}; expected a positive volume in mL")
    if not tumour_rest_volume_ml > 0:
        raise ModelError(f"psma_model: tumour_rest_volume_ml = {tumour_rest_volume_ml}; expected > 0")

    b = ModelBuilder("psma", description=__doc__.split("\n")[0])
    _Builder(b, tracer_objs, lesion_volumes_ml, tuple(lesion_rden_nmol_l), tumour_rest_volume_ml,
             body_weight_kg, height_cm, haematocrit, gfr_ml_min, organ_volumes_ml).build()
    return b.build()


class _Builder:
    """Writes the PSMA model into a ModelBuilder (split in steps for readability)."""

    def __init__(self, b, tracers, lesion_volumes_ml, lesion_rden, rest_ml, bw, height, hct, gfr, organ_ml):
        self.b = b
        self.tracers = tracers
        self.ligands = {t.ligand.name: t.ligand for t in tracers}
        # forms: (ligand name, nuclide or None)
        self.forms = [(t.ligand.name, t.nuclide) for t in tracers] + [(n, None) for n in self.ligands]
        self.lesion_volumes_ml = lesion_volumes_ml
        self.lesion_rden = lesion_rden
        self.rest_ml = rest_ml
        self.cov = dict(bw=bw, height=height, hct=hct, gfr=gfr)
        self.organ_ml = organ_ml
        self.tissue_species: dict[str, list[str]] = {}
        self.flows: dict[str, sp.Expr] = {}
        self.receptor_tissues: list[str] = []

    # ---------------------------------------------------------------- helpers
    def sp_name(self, comp: str, form) -> str:
        return f"{comp}__{_form_tag(*form)}"

    def species_all_forms(self, comp: str, region: str):
        for form in self.forms:
            name = self.sp_name(comp, form)
            self.b.species(name, comp, ligand=form[0], nuclide=form[1])
            self.tissue_species.setdefault(region, []).append(name)

    def flow_between(self, label: str, q, src: str, dst: str):
        """Convective plasma flow q (L/h) carrying every form from src to dst."""
        for form in self.forms:
            s = self.sp_name(src, form)
            self.b.transfer(f"{label}__{_form_tag(*form)}", q * self.b.concentration(s), s, self.sp_name(dst, form))

    def exchange(self, label: str, ps, a: str, c: str):
        """Passive bidirectional exchange PS (C_a - C_c) (L/h) for every form."""
        for form in self.forms:
            sa, sc = self.sp_name(a, form), self.sp_name(c, form)
            rate = ps * (self.b.concentration(sa) - self.b.concentration(sc))
            self.b.transfer(f"{label}__{_form_tag(*form)}", rate, sa, sc)

    def organ_volume(self, name: str, default_l: float, fixed: bool, source: str):
        value = self.organ_ml.get(name, default_l * 1000.0) / 1000.0
        p = self.b.parameter(f"{name}_volume_l", value, "L", lower=1e-6, source=source,
                             description=f"total {name} volume")
        if fixed or name in self.organ_ml:
            return p
        return p * self.bw / REFERENCE_WEIGHT_KG

    # ---------------------------------------------------------------- build
    def build(self):
        self.globals()
        self.blood()
        for t in TISSUES:
            self.tissue(t)
        self.brain()
        self.salivary_glands()
        self.tumours()
        self.kidneys()
        self.rest()
        self.receptor_binding()
        self.decay()
        self.regions()

    def globals(self):
        b, c = self.b, self.cov
        self.bw = b.parameter("body_weight_kg", c["bw"], "kg", lower=20, upper=300, source=f"{ICRP89} (73 kg)")
        self.height = b.parameter("height_cm", c["height"], "cm", lower=100, upper=250, source=f"{ICRP89} (176 cm)")
        self.hct = b.parameter("haematocrit", c["hct"], "1", lower=0.1, upper=0.7, source=PYCNO)
        self.gfr = b.parameter("gfr_ml_min", c["gfr"], "mL/min", lower=1, upper=250,
                               source=f"{PYCNO}: GFR = TER/3 * 201/151 with 99mTc-MAG3 TER 200 mL/min")
        self.phi = b.parameter("filtration_factor", 0.66, "1", upper=1, source=PYCNO)
        self.f_exc = b.parameter("fraction_excreted", 0.96, "1", upper=1, source=PYCNO)
        bsa = b.assign("bsa_m2", sp.sqrt(self.bw * self.height / 3600))  # Mosteller
        self.vp = b.assign("plasma_volume_l", 2.8 * (1 - self.hct) * bsa)
        self.F = b.assign("cardiac_plasma_output_l_h", 1.23 * PER_MIN * self.vp)
        self.gfr_eff = b.assign("gfr_eff_l_h", self.phi * self.gfr * 60 / 1000)
        for lig in self.ligands.values():
            t = _tag(lig.name)
            src = lig.source
            kon = b.parameter(f"kon_{t}_l_nmol_h", lig.kon_l_per_nmol_h, "L/(nmol*h)", source=src)
            kd = b.parameter(f"kd_{t}_nm", lig.kd_nm, "nM", lower=1e-6, source=src)
            b.assign(f"koff_{t}_per_h", kon * kd)
            b.parameter(f"lambda_int_{t}_per_h", lig.lambda_int_per_h, "1/h", source=src)
            b.parameter(f"fu_{t}", lig.unbound_fraction_plasma, "1", upper=1, source=src)
        for nuc in sorted({t.nuclide for t in self.tracers}):
            b.parameter(decay_parameter_name(nuc), next(t for t in self.tracers if t.nuclide == nuc).decay_constant_per_h,
                        "1/h", source=f"ICRP Publication 107 half-life of {nuc} (icrp107-database)")

    def blood(self):
        b = self.b
        b.compartment("arterial", b.assign("arterial_volume_l", 0.105 * self.vp))
        b.compartment("venous", b.assign("venous_volume_l", 0.225 * self.vp))
        self.species_all_forms("arterial", "blood")
        self.species_all_forms("venous", "blood")
        for form in self.forms:
            b.dose_target(form[0], form[1], self.sp_name("venous", form))
        self.vas_volumes = [sp.Symbol("arterial_volume_l"), sp.Symbol("venous_volume_l")]

    def vascular_interstitial(self, name, V, vas, int_, kps_per_min, region=None):
        b = self.b
        region = region or name
        v_vas = b.assign(f"{name}_vas_volume_l", vas)
        self.vas_volumes.append(v_vas)
        b.compartment(f"{name}_vas", v_vas)
        self.species_all_forms(f"{name}_vas", region)
        if int_ is None:
            return
        b.compartment(f"{name}_int", b.assign(f"{name}_int_volume_l", int_))
        self.species_all_forms(f"{name}_int", region)
        kps = b.parameter(f"{name}_kps_per_h", kps_per_min * PER_MIN, "1/h", source=PYCNO,
                          description="permeability-surface product per tissue volume")
        self.exchange(f"{name}_ps", kps * V, f"{name}_vas", f"{name}_int")

    def tissue(self, t: Tissue):
        V = self.organ_volume(t.name, t.volume_l, t.fixed_volume, t.source)
        V = self.b.assign(f"{t.name}_total_volume_l", V)
        self.vascular_interstitial(t.name, V, t.vas(V, self.vp, self.hct), t.int_(V, self.vp, self.hct), t.kps_per_min)
        if t.name == "lungs":
            self.flow_between("venous_to_lungs", self.F, "venous", "lungs_vas")
            self.flow_between("lungs_to_arterial", self.F, "lungs_vas", "arterial")
            return
        q = self.b.assign(f"{t.name}_flow_l_h", t.flow(self.F, V))
        self.flows[t.name] = q
        self.flow_between(f"arterial_to_{t.name}", q, "arterial", f"{t.name}_vas")
        if t.name == "liver":
            return  # liver outflow is added in rest() once all portal flows are known
        self.flow_between(f"{t.name}_out", q, f"{t.name}_vas", "liver_vas" if t.portal else "venous")
        if t.receptor:
            self.receptor_tissue(t.name, V)

    def receptor_tissue(self, name, V, rden_default=None, lam_rel_per_min=2.9e-4, rden_source=PYCNO,
                        rel_source=PYCNO, cell_volume=None):
        """Bound and internalised pools for a receptor-positive tissue of total volume V."""
        b = self.b
        if rden_default is None:
            rden_default = RDEN_RELATIVE[name]
        rden = b.parameter(f"{name}_rden_nmol_l", rden_default, "nmol/L", source=rden_source,
                           description="receptor density per tissue volume",
                           prior=LogNormalPrior(rden_default, 0.5, "weakly informative, centred on the default"))
        b.assign(f"{name}_r0_nmol", rden * V)
        b.parameter(f"{name}_lambda_rel_per_h", lam_rel_per_min * PER_MIN, "1/h", source=rel_source,
                    description="release rate of internalised ligand")
        if cell_volume is None:
            cell_volume = V - sp.Symbol(f"{name}_vas_volume_l") - sp.Symbol(f"{name}_int_volume_l")
        cell = b.assign(f"{name}_cell_volume_l", cell_volume)
        for pool in ("bound", "intern"):
            b.compartment(f"{name}_{pool}", cell)
            self.species_all_forms(f"{name}_{pool}", name)
        self.receptor_tissues.append(name)

    def brain(self):
        V = self.b.assign("brain_total_volume_l", self.organ_volume("brain", BRAIN["volume_l"], False, PYCNO))
        self.vascular_interstitial("brain", V, BRAIN["vas"](self.vp), None, 0.0)
        q = self.b.assign("brain_flow_l_h", BRAIN["flow"](self.F))
        self.flows["brain"] = q
        self.flow_between("arterial_to_brain", q, "arterial", "brain_vas")
        self.flow_between("brain_out", q, "brain_vas", "venous")

    def simple_receptor_organ(self, name, V, vas, int_, flow, kps_per_min, **receptor_kw):
        V = self.b.assign(f"{name}_total_volume_l", V)
        self.vascular_interstitial(name, V, vas(V), int_(V), kps_per_min)
        q = self.b.assign(f"{name}_flow_l_h", flow(V))
        self.flows[name] = q
        self.flow_between(f"arterial_to_{name}", q, "arterial", f"{name}_vas")
        self.flow_between(f"{name}_out", q, f"{name}_vas", "venous")
        self.receptor_tissue(name, V, **receptor_kw)

    def salivary_glands(self):
        V = self.organ_volume("salivary_glands", 0.085, True, f"{ICRP89} (85 g); PyCNO uses 0.021 L")
        H = self.hct
        self.simple_receptor_organ(
            "salivary_glands", V, lambda V: 0.03 * (1 - H) * V, lambda V: 0.23 * V,
            lambda V: 0.074 * PER_MIN * V, 2.0,
            rden_default=38.0, lam_rel_per_min=4.2e-4, rden_source=PYCNO,
        )

    def tumours(self):
        b, H = self.b, self.hct
        perf = b.parameter("tumour_perfusion_per_h", 0.26 * PER_MIN, "mL/(h*g) = 1/h", source=BARTELINK,
                           description="tumour plasma perfusion per tissue volume (0.26 mL/min/g)")
        lam_rel_tumour = 1.5e-4
        entries = [(f"lesion_{i + 1}", v / 1000.0, r) for i, (v, r) in enumerate(zip(self.lesion_volumes_ml, self.lesion_rden))]
        entries.append(("tumour_rest", self.rest_ml / 1000.0, 70.0))
        for name, vol_l, rden in entries:
            V = b.parameter(f"{name}_volume_l", vol_l, "L", lower=1e-7, source="patient imaging (default: illustration)")
            self.simple_receptor_organ(
                name, V, lambda V: 0.05 * (1 - H) * V, lambda V: 0.38 * V, lambda V: perf * V, 0.6,
                rden_default=rden, lam_rel_per_min=lam_rel_tumour,
                rden_source=f"{BARTELINK}: 13-patient lesion fits, means 50 and 54 nmol/L; tumour rest 1.4 x mean",
            )

    def kidneys(self):
        b = self.b
        V = b.assign("kidneys_total_volume_l", self.organ_volume("kidneys", 0.31, True, f"{ICRP89} (310 g); PyCNO 0.311 L"))
        v_vas = b.assign("kidneys_vas_volume_l", 0.055 * V)
        v_tub = b.assign("kidneys_int_volume_l", 0.15 * V)
        v_reabs = b.assign("kidneys_reabs_volume_l", sp.Rational(2, 3) * (V - v_vas - v_tub))
        self.vas_volumes.append(v_vas)
        b.compartment("kidneys_vas", v_vas)
        b.compartment("kidneys_tubule", v_tub)
        b.compartment("kidneys_reabs", v_reabs)
        b.compartment("urine", 1)
        for comp in ("kidneys_vas", "kidneys_tubule", "kidneys_reabs"):
            self.species_all_forms(comp, "kidneys")
        self.species_all_forms("urine", "urine")
        q = b.assign("kidneys_flow_l_h", 0.19 * self.F)
        self.flows["kidneys"] = q
        self.flow_between("arterial_to_kidneys", q, "arterial", "kidneys_vas")
        self.flow_between("kidneys_out", q, "kidneys_vas", "venous")
        g, fexc = self.gfr_eff, self.f_exc
        for form in self.forms:
            tag = _form_tag(*form)
            fu = sp.Symbol(f"fu_{_tag(form[0])}")
            kv, kt, kr, ur = (self.sp_name(c, form) for c in ("kidneys_vas", "kidneys_tubule", "kidneys_reabs", "urine"))
            b.transfer(f"filtration__{tag}", g * fu * b.concentration(kv), kv, kt)
            b.transfer(f"excretion__{tag}", fexc * g * b.concentration(kt), kt, ur)
            b.transfer(f"to_reabsorption__{tag}", (1 - fexc) * g * b.concentration(kt), kt, kr)
            b.transfer(f"reabsorption__{tag}", (1 - fexc) * g * b.concentration(kr), kr, kv)
        self._kidney_receptors(V, v_vas, v_tub, v_reabs)

    def _kidney_receptors(self, V, v_vas, v_tub, v_reabs):
        self.receptor_tissue(
            "kidneys", V, rden_default=40.0, lam_rel_per_min=2.9e-4, cell_volume=V - v_vas - v_tub - v_reabs,
            rden_source="re-set to give clinical kidney dose per activity (see DEFAULTS_NOTES); PyCNO 14, Amsterdam 18 nmol/L",
        )

    def rest(self):
        b = self.b
        # liver outflow: hepatic artery + portal (spleen, GI)
        q_liver_out = self.flows["liver"] + self.flows["spleen"] + self.flows["gi"]
        self.flow_between("liver_out", q_liver_out, "liver_vas", "venous")
        self.receptor_tissue("liver", sp.Symbol("liver_total_volume_l"))
        # rest of body closes the volume and flow balances
        named = [sp.Symbol(f"{t.name}_total_volume_l") for t in TISSUES] + [
            sp.Symbol(f"{n}_total_volume_l") for n in ["brain", "salivary_glands", "kidneys", "tumour_rest"]
            + [f"lesion_{i + 1}" for i in range(len(self.lesion_volumes_ml))]
        ]
        V = b.assign("rest_total_volume_l", self.bw - sum(named))
        v_vas = self.vp - sum(self.vas_volumes)
        self.vascular_interstitial("rest", V, v_vas, 4.1 * sp.Symbol("rest_vas_volume_l"), 0.02)
        q = b.assign("rest_flow_l_h", self.F - sum(self.flows.values()), positive=True)
        self.flow_between("arterial_to_rest", q, "arterial", "rest_vas")
        self.flow_between("rest_out", q, "rest_vas", "venous")

    def receptor_binding(self):
        b = self.b
        for tissue in self.receptor_tissues:
            free = sp.Symbol(f"{tissue}_r0_nmol") - sum(
                sp.Symbol(self.sp_name(f"{tissue}_bound", f)) for f in self.forms
            )
            site = "kidneys_tubule" if tissue == "kidneys" else f"{tissue}_int"
            for form in self.forms:
                lt, tag = _tag(form[0]), _form_tag(*form)
                free_lig = self.sp_name(site, form)
                bound = self.sp_name(f"{tissue}_bound", form)
                intern = self.sp_name(f"{tissue}_intern", form)
                kon, koff = sp.Symbol(f"kon_{lt}_l_nmol_h"), sp.Symbol(f"koff_{lt}_per_h")
                b.transfer(f"{tissue}_binding__{tag}", kon * free * b.concentration(free_lig), free_lig, bound)
                b.transfer(f"{tissue}_unbinding__{tag}", koff * sp.Symbol(bound), bound, free_lig)
                b.transfer(f"{tissue}_internalisation__{tag}",
                           sp.Symbol(f"lambda_int_{lt}_per_h") * sp.Symbol(bound), bound, intern)
                b.transfer(f"{tissue}_release__{tag}",
                           sp.Symbol(f"{tissue}_lambda_rel_per_h") * sp.Symbol(intern), intern, free_lig)

    def decay(self):
        b = self.b
        for comp in b.compartment_names:
            for t in self.tracers:
                hot, cold = self.sp_name(comp, (t.ligand.name, t.nuclide)), self.sp_name(comp, (t.ligand.name, None))
                lam = sp.Symbol(decay_parameter_name(t.nuclide))
                b.transfer(f"decay_{comp}__{_form_tag(t.ligand.name, t.nuclide)}", lam * sp.Symbol(hot), hot, cold)

    def regions(self):
        b = self.b
        volumes = {"blood": sp.Symbol("arterial_volume_l") + sp.Symbol("venous_volume_l"), "urine": None}
        for region, species in self.tissue_species.items():
            vol = volumes.get(region, sp.Symbol(f"{region}_total_volume_l"))
            b.region(region, species, vol)
        body = [s for r, sps in self.tissue_species.items() if r != "urine" for s in sps]
        b.region("whole_body", body, self.bw)


# Receptor densities (nmol/L) of the minor receptor-positive tissues relative to the
# prostate, which is 0.1 x tumour rest (PyCNO; Amsterdam code: same ratios).
_PROSTATE_RDEN = 0.1 * 70.0
RDEN_RELATIVE = {
    "prostate": _PROSTATE_RDEN,
    "liver": 0.05 * _PROSTATE_RDEN,
    "spleen": 0.02 * _PROSTATE_RDEN,
    "gi": 0.06 * _PROSTATE_RDEN,
}
