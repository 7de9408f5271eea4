"""Training and validation input from a dataset folder (Cityscapes-VPS layout).

`open_split(config, workdir, split)` validates the folder (clear errors with
the manual-download instructions) and returns a random-access frame source
over the folder's reader plus its `FrameIndex`; frames are read lazily, so
no conversion step is needed. `train_batches(...)` / `eval_batches(...)`
build the `data_pipeline.pipeline.train_dataset` batches, every array
[local_devices, per_device_batch, ...].

Exact resume: the training pipeline is a deterministic function of
(config.seed, process count) and the step, so a run restarted at step N
skips its first N batches (`start_step`).
"""

import functools
import os
from typing import Iterator, Optional, Tuple

import numpy as np

from data_pipeline import pipeline

DATASETS = ("vps_synthetic", "cityscapes_vps", "cityscapes", "viper")
VAL_SPLIT = {"vps_synthetic": "val", "cityscapes_vps": "val",
             "cityscapes": "val", "viper": "val_day"}


def _module(name: str):
  # pylint: disable=g-import-not-at-top
  if name == "vps_synthetic":
    from data_pipeline import synthetic
    return synthetic
  if name == "cityscapes_vps":
    from data_pipeline import cityscapes_vps
    return cityscapes_vps
  if name == "cityscapes":
    from data_pipeline import cityscapes
    return cityscapes
  if name == "viper":
    from data_pipeline import viper
    return viper
  raise ValueError(f"Unknown config.dataset.name {name!r}; one of "
                   f"{list(DATASETS)}")


def _instructions(name: str) -> str:
  # pylint: disable=g-import-not-at-top
  if name == "cityscapes":
    from data_pipeline import cityscapes
    return " ".join(cityscapes.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
  from data_pipeline import tfds_builders
  cls = {"cityscapes_vps": tfds_builders.CityscapesVps,
         "viper": tfds_builders.Viper}[name]
  return " ".join(cls.MANUAL_DOWNLOAD_INSTRUCTIONS.split())


def data_dir(config, workdir: str) -> str:
  return config.dataset.data_dir or os.path.join(workdir, "data")


def meta(config):
  """The dataset's `metadata.DatasetMeta`."""
  return _module(config.dataset.name).META


def ensure_synthetic(config, root: str) -> None:
  """Writes vps_synthetic to `root` when it is missing or empty."""
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  if os.path.isdir(root) and os.listdir(root):
    return
  s = config.dataset.synthetic
  synthetic.write_dataset(root, s.num_train_videos, s.num_val_videos,
                          s.height, s.width, config.seed, progress=False)


class ReaderSource:
  """Random-access frames of a `VpsReader` split in `tfds_builders` format.

  flow_dir: vps_synthetic's `{split}/flow` folder; frames then carry
  'flow_layer' and 'flow_offsets' (its exact motion), as the TFDS builder's.
  """

  def __init__(self, reader, flow_dir: Optional[str] = None):
    from data_pipeline import tfds_builders  # pylint: disable=g-import-not-at-top
    self._example = tfds_builders.frame_example
    self._reader = reader
    self._frames = [f for _, fs in sorted(reader.videos().items())
                    for f in fs]
    self._flow_dir = flow_dir
    self._flow_fields = functools.lru_cache(maxsize=16)(self._load_flow)

  def _load_flow(self, video_id: int):
    from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.load_flow_fields(
        os.path.join(self._flow_dir, f"{video_id:04d}.npz"))

  @property
  def reader(self):
    return self._reader

  @property
  def image_ids(self):
    """The image id of every record."""
    return [f.image_id for f in self._frames]

  def __len__(self):
    return len(self._frames)

  def __getitem__(self, i):
    frame = self._frames[int(i)]
    example = self._example(self._reader, frame)
    if self._flow_dir:
      fields = self._flow_fields(frame.video_id)
      t = frame.frame_index - 1
      example["flow_layer"] = fields["layer"][t].astype(np.int32)
      example["flow_offsets"] = fields["offsets"][:, t].astype(np.int32)
    return example

  def index(self) -> pipeline.FrameIndex:
    f = self._frames
    return pipeline.FrameIndex(
        np.array([x.video_id for x in f], np.int32),
        np.array([x.frame_index for x in f], np.int32),
        np.array([x.annotated for x in f], bool))


def open_split(config, workdir: str, split: str
               ) -> Tuple[ReaderSource, pipeline.FrameIndex]:
  """(source, index) of `split` ('train' or 'val') of config.dataset."""
  name = config.dataset.name
  module = _module(name)
  root = data_dir(config, workdir)
  if split == "val":
    split = VAL_SPLIT[name]
  if name == "vps_synthetic":
    ensure_synthetic(config, root)
  try:
    reader = module.reader(root, split)
  except (FileNotFoundError, ValueError) as e:
    if name == "vps_synthetic":
      raise ValueError(
          f"{root} is not a vps_synthetic dataset ({e}); point "
          "config.dataset.data_dir at an empty folder (it is generated "
          "there) or a complete one") from e
    raise ValueError(
        f"config.dataset.data_dir={root!r} is not a {name} folder in the "
        f"expected layout: {e}. {_instructions(name)}") from e
  flow_dir = (os.path.join(root, split, "flow") if name == "vps_synthetic"
              else None)
  source = ReaderSource(reader, flow_dir)
  if not len(source):
    raise ValueError(f"{root}: split {split!r} has no frames")
  index = source.index()
  if (name == "cityscapes" and split == "train" and
      tuple(config.input.ref_offsets) != (0,) and index.annotated.all()):
    raise ValueError(
        f"{root} has no leftImg8bit_sequence/train: image-level Cityscapes "
        "takes its reference frames (config.input.ref_offsets="
        f"{tuple(config.input.ref_offsets)}) from the sequence frames. "
        f"{_instructions(name)}")
  return source, index


def needs_flow(config) -> bool:
  """Whether the model of config.variant takes an initial flow."""
  from vpsnet_jax.modeling import vpsnet  # pylint: disable=g-import-not-at-top
  return vpsnet.VARIANTS[config.variant].fuse


def train_config(config, per_device_batch: int,
                 evaluation: bool = False) -> pipeline.TrainConfig:
  """The pipeline settings of config.variant: the flow only for variants
  that fuse, annotated references only for variants that track (the track
  head learns from the reference's boxes); evaluation: no scale / flip."""
  from vpsnet_jax.modeling import vpsnet  # pylint: disable=g-import-not-at-top
  i = config.input
  return pipeline.TrainConfig(
      crop_size=tuple(i.crop_size),
      scale_range=(1.0, 1.0) if evaluation else tuple(i.scale_range),
      flip_probability=0.0 if evaluation else i.flip_probability,
      ref_offsets=tuple(i.ref_offsets),
      ref_requires_annotation=vpsnet.VARIANTS[config.variant].track,
      max_instances=i.max_instances,
      flow=i.flow if needs_flow(config) else "none",
      size_divisor=i.size_divisor, per_device_batch=per_device_batch,
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
