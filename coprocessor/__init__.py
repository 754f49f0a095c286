"""Shared domain library of the FHE coprocessor: types, settings, errors, data layer, engine."""
