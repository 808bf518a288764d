"""Offline jobs on an index: build it (indexing), calibrate it on its own catalog
(self_calibration), adapt it to its examples (fit)."""
