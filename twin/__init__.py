"""PatientTwin: composition of pbpk, imaging, calibration and dose — not implemented yet (issue 9)."""
