"""Checking: parity against the ground truth, idiomatic reference loops, overhead."""
