"""kdflow: the engine under the pipeline. Importing it has no side effects and needs only torch, numpy,
pandas, pyarrow and pydantic; the orchestration packages (prefect, mlflow, dvc) are imported where used."""

__version__ = "0.1.0"
