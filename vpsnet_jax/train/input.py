"""Training and validation batches of a split (`data_pipeline.sources`).

`train_batches(...)` / `eval_batches(...)` build the `data_pipeline.
pipeline.train_dataset` batches of a source, every array [local_devices,
per_device_batch, ...]; `train_config` is the pipeline's settings for
config.variant.

Exact resume and any topology: step s's global batch is a deterministic
function of (config.seed, s), each process reading its contiguous slice,
so a run restarted at step N skips its first N batches (`start_step`).
"""

from typing import Iterator

from data_pipeline import pipeline
from vpsnet_jax import experiment


def train_config(config, per_device_batch: int,
                 evaluation: bool = False) -> pipeline.TrainConfig:
  """The pipeline settings of config.variant: the flow only for variants
  that fuse (and not FlowNet2's, which the model computes), annotated
  references only for variants that track (the track head learns from the
  reference's boxes); evaluation: no scale / flip."""
  i = config.input
  return pipeline.TrainConfig(
      crop_size=tuple(i.crop_size),
      scale_range=(1.0, 1.0) if evaluation else tuple(i.scale_range),
      flip_probability=0.0 if evaluation else i.flip_probability,
      ref_offsets=tuple(i.ref_offsets),
      ref_requires_annotation=experiment.variant_tracks(config),
      max_instances=i.max_instances,
      flow=i.flow if experiment.variant_uses_flow(config) and not (
          experiment.flow_on_device(config)) else "none",
      size_divisor=i.size_divisor, crop_retries=i.crop_retries,
      per_device_batch=per_device_batch,
      seed=config.seed)


def num_train_pairs(index: pipeline.FrameIndex, config) -> int:
  """Training pairs per (un-repeated) epoch."""
  return len(pipeline.train_pairs(index, train_config(config, 1), 0))


def train_batches(source, index, config, per_device_batch: int,
                  start_step: int = 0) -> Iterator[dict]:
  """NumPy batches [local_devices, per_device_batch, ...] from `start_step`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = pipeline.train_dataset(source, index,
                              train_config(config, per_device_batch))
  if start_step:
    ds = ds.skip(start_step)
  return iter(tfds.as_numpy(ds))


def eval_batches(source, index, config, per_device_batch: int
                 ) -> Iterator[dict]:
  """One pass of validation pairs (no augmentation), same layout."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = pipeline.train_dataset(
      source, index, train_config(config, per_device_batch, evaluation=True),
      num_epochs=1)
  if config.input.num_eval_batches:
    ds = ds.take(config.input.num_eval_batches)
  return iter(tfds.as_numpy(ds))
