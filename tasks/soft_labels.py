"""Stage `soft_labels`: the teacher's logits for the transfer set and the source training set.

Raw logits are stored, keyed by `sample_id`; the temperature is applied when the student trains, so one file
serves every temperature. Rows are streamed in chunks of `soft_labels.chunk_size`, so peak memory stays flat
however large the transfer set grows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kdflow.artifacts import atomic_path, file_digest, write_json
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import Params
from kdflow.datasets import feature_columns, open_parquet, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.graph import SOFT_LABELLED
from kdflow.progress import progress
from kdflow.stage import stage_run
from kdflow.training import intra_op_threads, resolve_device

T = TypeVar("T")


def read_ahead(chunks: Iterator[T]) -> Iterator[T]:
    """The items of `chunks`, each next one produced in a background thread while the caller works on this one.

    Decoding Parquet and the teacher's forward pass both release the GIL, so reading overlaps inference.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


@torch.inference_mode()
def write_logits(teacher: torch.nn.Module, source: Path, target: Path, input_shape: tuple[int, ...],
                 num_classes: int, chunk_size: int, device: torch.device = torch.device("cpu")) -> int:
    """Stream `source` through the teacher (on `device`) into `target` (sample_id, logit_0..K-1); returns the row
    count."""
    schema = pa.schema([("sample_id", pa.string())] + [(f"logit_{k}", pa.float32()) for k in range(num_classes)])
    reader = open_parquet(source)
    features = feature_columns(reader.schema_arrow.names)

    def decoded() -> Iterator[tuple[pa.Array, np.ndarray]]:
        for batch in reader.iter_batches(batch_size=chunk_size, columns=["sample_id", *features]):
            x = np.stack([batch.column(name).to_numpy() for name in features], axis=1).astype(np.float32)
            yield batch.column("sample_id").cast(pa.string()), x

    rows = 0
    labelled = progress(description=f"soft labels: {source.stem}", total=reader.metadata.num_rows, unit="rows")
    # Chunks are written in a background thread too (compressing releases the GIL), one at a time, in order.
    with (atomic_path(target) as temporary, pq.ParquetWriter(temporary, schema, compression="zstd") as writer,
          ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind") as write_behind):
        written = None
        for sample_ids, x in read_ahead(decoded()):
            logits = teacher(torch.from_numpy(x).reshape(len(x), *input_shape).to(device)).float().cpu().numpy()
            columns = [sample_ids] + [pa.array(logits[:, k]) for k in range(num_classes)]
            if written is not None:
                written.result()  # one chunk in flight: memory stays flat, a write error surfaces here
            written = write_behind.submit(writer.write_table, pa.Table.from_arrays(columns, schema=schema))
            rows += len(x)
            labelled.update(len(x))
        if written is not None:
            written.result()
        if rows == 0:
            writer.write_table(schema.empty_table())
    labelled.close()
    return rows


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    card = read_dataset_card(paths.dataset_card)
    checkpoint = paths.checkpoint("teacher")
    # The same thread count under every runner: the same logits, so the same bytes.
    with (stage_run(paths, "soft_labels", params, parent_run_id) as tracked,
          intra_op_threads(params.soft_labels.threads)):
        teacher, meta = load_model(checkpoint, expected_spec(params, "teacher"))
        device = resolve_device(params.soft_labels.device)
        teacher.to(device)
        num_classes = len(meta["class_names"])
        manifest = {"teacher_checkpoint_md5": file_digest(checkpoint), "files": {}}
        metrics = {}
        for name in SOFT_LABELLED:
            target = paths.soft_labels(name)
            rows = write_logits(teacher, paths.split(name), target, card.input_shape, num_classes,
                                params.soft_labels.chunk_size, device)
            manifest["files"][name] = {"rows": rows, "md5": file_digest(target),
                                       "input_md5": card.splits[name].md5}
            metrics[f"soft_label_rows_{name}"] = rows
        write_json(paths.soft_labels_manifest, manifest)
        tracked.set_tags({"kdflow.teacher_checkpoint_md5": manifest["teacher_checkpoint_md5"]})
        tracked.log_metrics(metrics)
        tracked.log_artifact(paths.soft_labels_manifest)
    return metrics
