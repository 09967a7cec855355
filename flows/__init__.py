"""Prefect flows that chain the tasks of tasks/."""
