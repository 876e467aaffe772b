"""`python -m kdflow`: the same command line as the `kdflow` script."""

from kdflow.cli import app

app()
