"""Prefect flows: each composes the tasks of tasks/ over the engine's stage functions."""
