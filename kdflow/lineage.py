"""Lineage between MLflow runs: which run wrote each file a run read, found by the files' md5 (DVC's digest).

A stage run tags the md5 of every file it reads (`kdflow.input.<key>.md5`) and writes
(`kdflow.output.<key>.md5`), each beside the file's path (`kdflow.input.<key>.path`), and the id of the stage run
that wrote each of its inputs (`kdflow.upstream.<stage>`). The key is a digest of the path, because MLflow's tag
keys allow only some characters and a user's file may be named `digits (v2)'s.csv`. Model runs inherit their stage's input and upstream tags. Following the upstream
tags from the target model gives the chain data -> teacher -> soft labels -> student -> target model, across
pipeline runs too: a stage skipped as cached points at the earlier run that wrote the files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kdflow.artifacts import file_digest
from kdflow.graph import STAGES

STAGE_STEPS = {name: stage.step for name, stage in STAGES.items()}
INPUT_PREFIX, OUTPUT_PREFIX, UPSTREAM_PREFIX = "kdflow.input.", "kdflow.output.", "kdflow.upstream."
DIGEST_SUFFIX, PATH_SUFFIX = ".md5", ".path"


def relative(root: Path, path: Path) -> str:
    """The path as the project names it: relative to the root, or absolute when outside it (a user's data file)."""
    path = Path(path).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def _file_key(prefix: str, path: str) -> str:
    """`<prefix><sha1 of the path, 16 hex digits>`: a valid MLflow tag key whatever characters the path holds."""
    return prefix + hashlib.sha1(path.encode()).hexdigest()[:16]


def _file_tags(prefix: str, digests: dict[str, str]) -> dict[str, str]:
    tags = {}
    for path, digest in digests.items():
        key = _file_key(prefix, path)
        tags[key + DIGEST_SUFFIX], tags[key + PATH_SUFFIX] = digest, path
    return tags


def input_tags(digests: dict[str, str]) -> dict[str, str]:
    """Tags naming each input's md5 and path, from {path relative to the project: md5}."""
    return _file_tags(INPUT_PREFIX, digests)


def output_tags(root: Path, files: list[Path]) -> dict[str, str]:
    return _file_tags(OUTPUT_PREFIX, {relative(root, p): file_digest(p) for p in files})


def tagged_files(tags: dict[str, str], prefix: str) -> dict[str, str]:
    """{path: md5} from a run's input or output tags."""
    return {value: tags[key[:-len(PATH_SUFFIX)] + DIGEST_SUFFIX] for key, value in tags.items()
            if key.startswith(prefix) and key.endswith(PATH_SUFFIX) and key[:-len(PATH_SUFFIX)] + DIGEST_SUFFIX in tags}


def upstream_tags(client, experiment_id: str, inputs: dict[str, str]) -> dict[str, str]:
    """`kdflow.upstream.<stage>: run id` for the newest stage run that wrote each input with this very digest."""
    upstream: dict[str, str] = {}
    for path, digest in sorted(inputs.items()):
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{_file_key(OUTPUT_PREFIX, path)}{DIGEST_SUFFIX}` = '{digest}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if found:
            upstream[UPSTREAM_PREFIX + found[0].data.tags["kdflow.stage"]] = found[0].info.run_id
    return upstream


def _upstream_ids(run) -> list[str]:
    return [value for key, value in run.data.tags.items() if key.startswith(UPSTREAM_PREFIX)]


def chain(client, run_id: str) -> list:
    """The stage runs upstream of `run_id`, in pipeline order, and the run's own stage run last."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    start = client.get_run(run_id)
    if "kdflow.stage" not in start.data.tags and MLFLOW_PARENT_RUN_ID in start.data.tags:
        start = client.get_run(start.data.tags[MLFLOW_PARENT_RUN_ID])  # a model run: its stage's run
    if "kdflow.stage" not in start.data.tags:
        raise ValueError(f"run {run_id} is neither a kdflow stage run nor a model run; pass one of those "
                         "(e.g. the target_finetuned run)")
    found = {start.info.run_id: start}
    pending = _upstream_ids(start)
    while pending:
        upstream_id = pending.pop()
        if upstream_id not in found:
            found[upstream_id] = client.get_run(upstream_id)
            pending.extend(_upstream_ids(found[upstream_id]))
    order = list(STAGE_STEPS)
    return sorted(found.values(), key=lambda run: order.index(run.data.tags["kdflow.stage"]))


def format_chain(client, runs: list) -> str:
    """One block per step: the stage run, its commit, the files it read (and which run wrote them), its models."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    writers = {(path, digest): run for run in runs for path, digest in tagged_files(run.data.tags, OUTPUT_PREFIX).items()}
    lines = [" -> ".join(STAGE_STEPS[run.data.tags["kdflow.stage"]] for run in runs)]
    for run in runs:
        tags = run.data.tags
        lines.append(f"\n{STAGE_STEPS[tags['kdflow.stage']]}: {tags['kdflow.stage']} run {run.info.run_id} "
                     f"(git {tags.get('mlflow.source.git.commit', 'unknown')})")
        for path, digest in sorted(tagged_files(tags, INPUT_PREFIX).items()):
            writer = writers.get((path, digest))
            source = f" <- {writer.data.tags['kdflow.stage']} run {writer.info.run_id}" if writer else ""
            lines.append(f"  in   {path}  md5 {digest}{source}")
        for path, digest in sorted(tagged_files(tags, OUTPUT_PREFIX).items()):
            lines.append(f"  out  {path}  md5 {digest}")
        models = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}' and tags.`kdflow.model` != ''",
        )
        for model in sorted(models, key=lambda m: m.data.tags["kdflow.model"]):
            lines.append(f"  model {model.data.tags['kdflow.model']} run {model.info.run_id}  "
                         f"checkpoint md5 {model.data.tags.get('kdflow.checkpoint_md5', '-')}")
    return "\n".join(lines)
