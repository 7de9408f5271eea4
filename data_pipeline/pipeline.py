"""tf.data pipelines: training pairs and ordered evaluation frames.

Input is a random-access frame source: `open_source(builder, split)` on a
`tfds_builders` builder prepared with `file_format='array_record'` (or any
sequence of example dicts in the `tfds_builders` format, e.g. a list in
tests). A `FrameIndex` maps (video id, frame index) to records.

Training (`train_dataset`): every annotated frame is a target once per epoch,
in an order shuffled from (seed, epoch); its reference is a frame of the same
video at an offset drawn from `TrainConfig.ref_offsets` (annotated if
`ref_requires_annotation`, as the track head needs the reference's boxes).
The pair gets one joint random scale, flip and crop (`transforms`; a crop
that loses every instance is redrawn, `TrainConfig.crop_retries`), static
shapes, and is batched per device: every array is
[local_devices, per_device_batch, ...] (keys in `transforms.train_example`).
Hosts take contiguous slices of each global batch (`jax.process_index()` /
`process_count()`), so a step's global batch does not depend on the
topology.

Evaluation (`eval_dataset`): every frame of every video in order, with the
previous frame as reference (the first frame is its own reference); a host
takes whole videos.
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from data_pipeline import transforms


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Training input settings; crop_size and maxima make the shapes static."""
  crop_size: Tuple[int, int] = (800, 1600)
  scale_range: Tuple[float, float] = (0.8, 1.5)
  flip_probability: float = 0.5
  ref_offsets: Tuple[int, ...] = (-5, 5)
  ref_requires_annotation: bool = True
  max_instances: int = 50
  flow: str = "none"  # 'none' | 'ground_truth' | 'dis'
  size_divisor: int = 32
  # Redraws of a crop that keeps no instance (transforms.train_example).
  crop_retries: int = 10
  per_device_batch: int = 1
  seed: int = 0

  @property
  def out_size(self) -> Tuple[int, int]:
    return (transforms.round_up(self.crop_size[0], self.size_divisor),
            transforms.round_up(self.crop_size[1], self.size_divisor))


@dataclasses.dataclass(frozen=True)
class FrameIndex:
  """video_id, frame_index and annotated flag of every record of a source."""
  video_ids: np.ndarray  # int32 [R]
  frame_indices: np.ndarray  # int32 [R]
  annotated: np.ndarray  # bool [R]

  @classmethod
  def from_source(cls, source) -> "FrameIndex":
    rows = [(int(ex["video_id"]), int(ex["frame_index"]),
             bool(ex["annotated"])) for ex in (source[i]
                                               for i in range(len(source)))]
    if not rows:
      raise ValueError("The frame source is empty")
    v, f, a = (np.array(c) for c in zip(*rows))
    keys = set(zip(v.tolist(), f.tolist()))
    if len(keys) != len(rows):
      raise ValueError("The frame source has duplicate (video, frame) keys")
    return cls(v.astype(np.int32), f.astype(np.int32), a.astype(bool))

  def lookup(self) -> Dict[Tuple[int, int], int]:
    return {(int(v), int(f)): i for i, (v, f) in enumerate(
        zip(self.video_ids, self.frame_indices))}

  def videos(self) -> Dict[int, List[int]]:
    """video id -> record indices sorted by frame index."""
    out: Dict[int, List[int]] = {}
    for i in np.lexsort((self.frame_indices, self.video_ids)):
      out.setdefault(int(self.video_ids[i]), []).append(int(i))
    return out


def open_source(builder: tfds.core.DatasetBuilder, split: str,
                decode_flow: bool = True):
  """(random-access source, FrameIndex) of a prepared ArrayRecord split.

  decode_flow=False leaves vps_synthetic's 'flow_layer' undecoded (faster
  when the pipeline's flow is not 'ground_truth').
  """
  skip = {}
  if not decode_flow and "flow_layer" in builder.info.features:
    skip = {"flow_layer": tfds.decode.SkipDecoding()}
  try:
    source = builder.as_data_source(split=split, decoders=skip or None)
    light = builder.as_data_source(split=split, decoders={
        k: tfds.decode.SkipDecoding() for k in ("image", "panoptic",
                                                "flow_layer")
        if k in builder.info.features})
  except (NotImplementedError, ValueError, FileNotFoundError) as e:
    raise ValueError(
        f"{builder.name} split {split!r} is not available for random access; "
        "prepare the builder with file_format='array_record'") from e
  return source, FrameIndex.from_source(light)


def train_pairs(index: FrameIndex, cfg: TrainConfig,
                epoch: int) -> np.ndarray:
  """int64 [M, 2] (target record, reference record) for one epoch, shuffled
  from (cfg.seed, epoch). Targets without any valid reference are skipped."""
  rng = np.random.default_rng([cfg.seed, epoch])
  lookup = index.lookup()
  pairs = []
  for i in np.flatnonzero(index.annotated):
    v, f = int(index.video_ids[i]), int(index.frame_indices[i])
    refs = [lookup[(v, f + o)] for o in cfg.ref_offsets
            if (v, f + o) in lookup and (
                index.annotated[lookup[(v, f + o)]] or
                not cfg.ref_requires_annotation)]
    if refs:
      pairs.append((i, refs[rng.integers(len(refs))]))
  if not pairs:
    raise ValueError(f"No training pairs: no annotated frame has a reference "
                     f"at offsets {cfg.ref_offsets}")
  pairs = np.array(pairs, np.int64)
  return pairs[rng.permutation(len(pairs))]


def _train_specs(cfg: TrainConfig) -> Dict[str, tf.TensorSpec]:
  h, w = cfg.out_size
  n = cfg.max_instances
  f32, i32 = tf.float32, tf.int32
  specs = {
      "image": ([h, w, 3], f32), "ref_image": ([h, w, 3], f32),
      "pad_mask": ([h, w], tf.bool),
      "semantic": ([h, w], i32), "semantic_quarter": ([h // 4, w // 4], i32),
      "gt_boxes": ([n, 4], f32), "gt_classes": ([n], i32),
      "gt_track_ids": ([n], i32), "gt_valid": ([n], tf.bool),
      "gt_masks": ([n, h, w], tf.uint8), "gt_ref_index": ([n], i32),
      "ref_boxes": ([n, 4], f32), "ref_classes": ([n], i32),
      "ref_track_ids": ([n], i32), "ref_valid": ([n], tf.bool),
      "video_id": ([], i32), "frame_index": ([], i32),
      "ref_frame_index": ([], i32),
  }
  if cfg.flow != "none":
    specs["flow"] = ([h, w, 2], f32)
  return {k: tf.TensorSpec(s, d) for k, (s, d) in specs.items()}


def _example_seed(cfg: TrainConfig, epoch: int, position: int) -> int:
  return int(np.random.SeedSequence([cfg.seed, epoch, position, 1])
             .generate_state(1, np.uint64)[0] >> np.uint64(1))


def train_dataset(source, index: FrameIndex, cfg: TrainConfig, *,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None,
                  local_devices: Optional[int] = None,
                  num_epochs: Optional[int] = None) -> tf.data.Dataset:
  """Batches of training pairs shaped [local_devices, per_device_batch, ...].

  process_index / process_count / local_devices default to jax's values.
  Step s's global batch (G = process_count * local_devices *
  per_device_batch pairs) depends on (cfg.seed, s) alone: host h holds
  its contiguous slice h * G / process_count ..., so the device at global
  index i holds the pairs i * b ... i * b + b - 1, and each pair's
  augmentation is seeded by its place in the epoch, for any topology.
  """
  if cfg.flow not in transforms.FLOW_MODES:
    raise ValueError(f"flow must be one of {transforms.FLOW_MODES}, got "
                     f"{cfg.flow!r}")
  if None in (process_index, process_count, local_devices):
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else (
        process_index)
    process_count = jax.process_count() if process_count is None else (
        process_count)
    local_devices = jax.local_device_count() if local_devices is None else (
        local_devices)
  specs = _train_specs(cfg)
  keys = list(specs)

  batch = local_devices * cfg.per_device_batch

  def pairs():
    # One stream of pairs for all hosts (epochs back to back); the global
    # batch of step s is its positions [s * G, (s + 1) * G), and this host
    # reads the contiguous slice [process_index * batch, ...) of each.
    epoch, n = 0, 0
    while num_epochs is None or epoch < num_epochs:
      epoch_pairs = train_pairs(index, cfg, epoch)
      for pos, (t, r) in enumerate(epoch_pairs):
        if (n // batch) % process_count == process_index:
          yield t, r, _example_seed(cfg, epoch, pos)
        n += 1
      epoch += 1

  def load(t, r, seed):
    ex = transforms.train_example(
        source[int(t)], source[int(r)], np.random.default_rng(int(seed)),
        crop_size=cfg.crop_size, scale_range=cfg.scale_range,
        flip_probability=cfg.flip_probability,
        max_instances=cfg.max_instances, flow=cfg.flow,
        size_divisor=cfg.size_divisor, crop_retries=cfg.crop_retries)
    return [np.asarray(ex[k], specs[k].dtype.as_numpy_dtype) for k in keys]

  def tf_load(t, r, seed):
    values = tf.numpy_function(load, [t, r, seed],
                               [specs[k].dtype for k in keys], stateful=False)
    out = {}
    for k, v in zip(keys, values):
      v.set_shape(specs[k].shape)
      out[k] = v
    return out

  def per_device(x):
    return {k: tf.reshape(v, [local_devices, cfg.per_device_batch] +
                          v.shape[1:].as_list()) for k, v in x.items()}

  ds = tf.data.Dataset.from_generator(pairs, output_signature=(
      tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64),
      tf.TensorSpec([], tf.int64)))
  ds = ds.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).map(per_device)
  options = tf.data.Options()
  options.autotune.enabled = True
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_order(index: FrameIndex, process_index: int = 0,
               process_count: int = 1) -> np.ndarray:
  """int64 [M, 2] (record, previous record) of this host's videos, in
  order; videos are dealt to hosts round robin."""
  rows = []
  for k, (_, records) in enumerate(sorted(index.videos().items())):
    if k % process_count != process_index:
      continue
    for j, rec in enumerate(records):
      rows.append((rec, records[j - 1] if j else rec))
  return np.array(rows, np.int64).reshape(-1, 2)


def eval_streams(index: FrameIndex, num_streams: int,
                 process_index: int = 0, process_count: int = 1
                 ) -> Tuple[np.ndarray, np.ndarray]:
  """This host's videos dealt to `num_streams` lockstep streams (one per
  device): stream s plays its videos one after the other, frame by frame.

  Returns:
    rows: int64 [steps, num_streams, 2] (record, previous record; the
      first frame of a video is its own previous), padded at the end of
      shorter streams with a copy of their last row;
    valid: bool [steps, num_streams], False on the padding.
  """
  if num_streams < 1:
    raise ValueError(f"num_streams must be >= 1, got {num_streams}")
  videos = [v for k, (_, v) in enumerate(sorted(index.videos().items()))
            if k % process_count == process_index]
  streams = [[] for _ in range(num_streams)]
  for k, records in enumerate(videos):
    streams[k % num_streams] += [(rec, records[j - 1] if j else rec)
                                 for j, rec in enumerate(records)]
  steps = max((len(s) for s in streams), default=0)
  rows = np.zeros((steps, num_streams, 2), np.int64)
  valid = np.zeros((steps, num_streams), bool)
  for k, stream in enumerate(streams):
    if stream:
      rows[:len(stream), k] = stream
      rows[len(stream):, k] = stream[-1]
      valid[:len(stream), k] = True
    elif steps:  # More streams than videos: replay any frame, invalid.
      rows[:, k] = rows[:, 0] if k else 0
  return rows, valid


def eval_dataset(source, index: FrameIndex, *, flow: str = "none",
                 size_divisor: int = 32, process_index: Optional[int] = None,
                 process_count: Optional[int] = None,
                 num_streams: Optional[int] = None) -> tf.data.Dataset:
  """Frames in video order (keys in `transforms.eval_example`, plus 'record',
  the frame's record index in `source`, int64).

  Unbatched by default. With `num_streams`, videos play in that many
  lockstep streams (`eval_streams`) and every element is one step: arrays
  [num_streams, ...] plus 'valid' bool [num_streams].
  """
  if None in (process_index, process_count):
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else (
        process_index)
    process_count = jax.process_count() if process_count is None else (
        process_count)
  if num_streams is None:
    order = eval_order(index, process_index, process_count)
    valid = np.ones((len(order),), bool)
  else:
    rows, valid = eval_streams(index, num_streams, process_index,
                               process_count)
    order, valid = rows.reshape(-1, 2), valid.reshape(-1)
  first = source[int(order[0, 0])] if len(order) else source[0]
  size = np.asarray(first["image"]).shape[:2]
  h, w = (transforms.round_up(s, size_divisor) for s in size)
  specs = {"image": ([h, w, 3], tf.float32),
           "ref_image": ([h, w, 3], tf.float32),
           "pad_mask": ([h, w], tf.bool), "orig_size": ([2], tf.int32),
           "annotated": ([], tf.bool), "video_id": ([], tf.int32),
           "frame_index": ([], tf.int32), "ref_frame_index": ([], tf.int32)}
  if flow != "none":
    specs["flow"] = ([h, w, 2], tf.float32)
  keys = list(specs)

  def load(i, p):
    frame = source[int(i)]
    if np.asarray(frame["image"]).shape[:2] != size:
      raise ValueError(f'Frame {frame["image_id"]!r} has size '
                       f'{np.asarray(frame["image"]).shape[:2]}, the split '
                       f'starts with {size}')
    ex = transforms.eval_example(frame, source[int(p)], flow=flow,
                                 size_divisor=size_divisor)
    return [np.asarray(ex[k], specs[k][1].as_numpy_dtype) for k in keys]

  def tf_load(pair, ok):
    values = tf.numpy_function(load, [pair[0], pair[1]],
                               [specs[k][1] for k in keys], stateful=False)
    out = {}
    for k, v in zip(keys, values):
      v.set_shape(specs[k][0])
      out[k] = v
    out["record"] = pair[0]
    if num_streams is not None:
      out["valid"] = ok
    return out

  ds = tf.data.Dataset.from_tensor_slices((order, valid))
  ds = ds.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  if num_streams is not None:
    ds = ds.batch(num_streams, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def prefetch_to_device(dataset: tf.data.Dataset, size: int = 2):
  """Iterates a `train_dataset` as jax arrays on the local devices."""
  from flax import jax_utils  # pylint: disable=g-import-not-at-top
  return jax_utils.prefetch_to_device(iter(tfds.as_numpy(dataset)), size)

