"""Image I/O, quantification and time-activity extraction (SimpleITK, pydicom) — not implemented yet (issue 3)."""
