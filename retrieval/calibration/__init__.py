"""Calibration: scoring a setting on a dev set, the search over every lever, pseudo dev sets."""
