"""One module per pipeline stage: a pure `run(params, paths, parent_run_id) -> metrics`; `kdflow stage NAME` runs one."""
