"""Shared test configuration: the three speeds are markers (unit, integration, chaos)."""
