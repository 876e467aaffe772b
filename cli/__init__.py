"""The `kdflow` command line, the top layer: it uses flows, stages and the engine, and nothing imports it."""
