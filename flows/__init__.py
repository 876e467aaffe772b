"""Prefect flows: the pipeline, sweeps and schedules over the stage functions in `tasks/`."""
