"""One module per pipeline stage: a pure `run(params, paths, parent_run_id) -> metrics` and a `__main__`."""
