"""Prefect deployments: schedules, triggers and work pools for the flows."""
