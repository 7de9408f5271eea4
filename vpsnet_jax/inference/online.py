"""Online video inference: every frame in order, the previous as reference.

  model = FrameModel(vpsnet_model, variables)        # compiled once per size
  stats = predict_videos(config, model, source, index, image_ids, out_dir)

Videos play in lockstep streams, one per local device (`pipeline.
eval_streams`): the per-frame function is `jax.jit`-ed on one device and
`jax.pmap`-ed over the streams on several. Each frame's gathered feature
stays on its device as the next frame's reference, so the backbone runs
once per frame; the first frame of a video is its own reference with zero
flow (the same compiled function). The input pipeline reads the next
frames and computes their flow while the model runs, and the host work of
a frame (tracker, panoptic fusion, writing) overlaps the model's next step.

Per frame on the host: the valid panoptic detections go to the tracker
(`tracker.create(config)`), the panoptic map is resolved against the
semantic head and turned into segments (`panoptic`), and annotated frames
(every frame with `config.inference.write_all_frames`) are written in the
evaluation layout (`writers.PredictionWriter`).
"""

import collections
import time
from typing import Callable, Dict, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import pipeline
from vpsnet_jax import experiment
from vpsnet_jax.inference import panoptic
from vpsnet_jax.inference import tracker as tracker_lib
from vpsnet_jax.inference import writers
from vpsnet_jax.modeling import vpsnet
from vpsnet_jax.ops.resize import quarter_flow

# Model outputs the host needs (the gathered feature stays on the device).
HOST_KEYS = ("boxes", "scores", "classes", "valid", "keep", "embeddings",
             "panoptic", "semantic")


class FrameModel:
  """VPSNet's per-frame inference with its variables on the devices.

  `step(images, image_size, flow, has_reference)` takes arrays [G, ...]
  (G = number of devices = streams): images (G, H, W, 3), image_size
  (G, 2), flow (G, H/4, W/4, 2), has_reference (G,); it returns the
  `HOST_KEYS` outputs of `VPSNet.infer` as NumPy [G, ...] (and its "flow"
  when the model computes it: FlowNet2), after carrying each stream's
  gathered feature and image to its next step on the device (the
  reference of the fusion and of FlowNet2; `flow` is then ignored).
  """

  def __init__(self, model: vpsnet.VPSNet, variables, devices=None):
    self.model = model
    self.devices = list(devices or jax.local_devices())
    self.num_streams = len(self.devices)
    self.compiles = 0

    def frame_fn(variables, images, image_size, ref_gathered, flow,
                 has_reference, ref_images):
      self.compiles += 1  # Runs once per trace.
      out = model.apply(variables, images, image_size, ref_gathered, flow,
                        has_reference, ref_images, method=model.infer)
      out["panoptic"] = out["panoptic"].astype(jnp.int32)
      out["semantic"] = out["semantic"].astype(jnp.uint8)
      return out

    self.host_variables = variables
    if self.num_streams == 1:
      self._fn = jax.jit(frame_fn)
      self.variables = jax.device_put(variables, self.devices[0])
    else:
      def per_device(variables, images, image_size, ref_gathered, flow,
                     has_reference, ref_images):
        out = frame_fn(variables, images[None], image_size[None],
                       ref_gathered[None], flow[None], has_reference[None],
                       ref_images[None])
        return jax.tree_util.tree_map(lambda x: x[0], out)
      self._fn = jax.pmap(per_device, devices=self.devices)
      # Inputs take the sharding of pmap's own outputs, so that the carried
      # feature (a pmap output) and fresh inputs never retrace.
      self._sharding = jax.pmap(lambda x: x, devices=self.devices)(
          np.zeros((self.num_streams,), np.float32)).sharding
      self.variables = jax.tree_util.tree_map(
          lambda x: self._put(np.broadcast_to(
              np.asarray(x), (self.num_streams,) + np.shape(x))), variables)
    self._gathered = None
    self._previous = None  # The last step's images, on the devices.

  def _put(self, x):
    """Host [G, ...] -> the devices (split over them when G > 1)."""
    if self.num_streams == 1:
      return jax.device_put(x, self.devices[0])
    return jax.device_put(x, self._sharding)

  def dispatch(self, images, image_size, flow, has_reference):
    """Starts one step (asynchronously); returns its device outputs."""
    images = np.asarray(images, np.float32)
    device_images = self._put(images)
    if self._gathered is None or self._gathered.shape[1:3] != (
        images.shape[1] // 4, images.shape[2] // 4):
      g = jax.eval_shape(
          lambda v, i, s: self.model.apply(v, i, s, method=self.model.infer),
          self.host_variables,
          jax.ShapeDtypeStruct((1,) + images.shape[1:], jnp.float32),
          jax.ShapeDtypeStruct((1, 2), jnp.int32))["gathered"]
      self._gathered = self._put(np.zeros((self.num_streams,) + g.shape[1:],
                                          g.dtype))
      self._previous = device_images  # First frames: their own reference.
    out = self._fn(self.variables, device_images,
                   self._put(np.asarray(image_size, np.int32)),
                   self._gathered, self._put(np.asarray(flow, np.float32)),
                   self._put(np.asarray(has_reference, bool)),
                   self._previous)
    self._gathered = out["gathered"]
    self._previous = device_images
    return out

  @staticmethod
  def fetch(out, flow: bool = False) -> Dict[str, np.ndarray]:
    """Waits for a dispatched step; its host outputs as NumPy [G, ...]
    (with `flow`, the model's flow too: a host tracker reads it)."""
    keys = HOST_KEYS + (("flow",) if flow and "flow" in out else ())
    return jax.device_get({k: out[k] for k in keys})

  def step(self, images, image_size, flow, has_reference):
    return self.fetch(self.dispatch(images, image_size, flow, has_reference))


class FrameResult:
  """One frame's result handed to `on_frame` hooks."""

  def __init__(self, image_id, video_id, frame_index, annotated, ids,
               segments, image):
    self.image_id, self.video_id, self.frame_index = (image_id, video_id,
                                                      frame_index)
    self.annotated, self.ids, self.segments = annotated, ids, segments
    self.image = image


def predict_videos(config, model: FrameModel, source,
                   index: pipeline.FrameIndex, image_ids: Sequence[str],
                   out_dir: str, meta, *, write_all: Optional[bool] = None,
                   progress: bool = True,
                   on_frame: Optional[Callable[[FrameResult], None]] = None,
                   layout: str = "cityscapes_vps") -> Dict[str, float]:
  """Runs online inference over every video of `source` and writes the
  predictions of its annotated frames (or all frames) to `out_dir`.

  Args:
    config: the experiment config (variant, tracker, tracking, inference,
      input.flow, input.size_divisor).
    model: a `FrameModel`.
    source, index: a random-access frame source and its `FrameIndex`.
    image_ids: the image id of every record of `source`.
    out_dir: where `pan_pred/` and `pred.json` go (`writers.
      PredictionWriter`): an earlier run's PNGs and pred.json there are
      removed first (a rerun starts over: online tracking depends on every
      earlier frame); pred.json is rewritten every few seconds while
      running, and also when inference fails (for the frames done, then
      the error propagates).
    meta: the dataset's `metadata.DatasetMeta`.
    write_all: write every frame (default config.inference.write_all_frames).
    progress: a progress bar over frames.
    on_frame: called with a `FrameResult` after each frame.
    layout: the benchmark's prediction layout (`writers.LAYOUTS`).

  Returns:
    {"frames", "written", "seconds", "fps"} and the seconds spent in each
    stage: "model" (waiting for the device), "tracker", "fusion", "write"
    and "input" (waiting for the pipeline).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  cfg = model.model.cfg
  if write_all is None:
    write_all = config.inference.write_all_frames
  # The pipeline's flow, unless the model computes it (FlowNet2).
  flow_mode = config.input.flow if experiment.reads_flow(config) and not (
      experiment.flow_on_device(config)) else "none"
  # Whoever runs inference reads every video (multi-process training
  # evaluates on process 0 alone: VPQ needs every video's predictions).
  dataset = pipeline.eval_dataset(
      source, index, flow=flow_mode, size_divisor=config.input.size_divisor,
      num_streams=model.num_streams, process_index=0, process_count=1)
  streams = model.num_streams
  # The tracker's flow comes back from the device only when the model made
  # it and the tracker reads it.
  tracker_flow = (experiment.flow_on_device(config) and
                  experiment.tracker_reads_flow(config))
  trackers = [tracker_lib.create(config, cfg.offset) for _ in range(streams)]
  current = [None] * streams
  categories = [c.id for c in meta.categories]
  writer = writers.PredictionWriter(out_dir, clean=True, layout=layout)
  times = collections.defaultdict(float)
  total = int(np.sum(pipeline.eval_streams(index, streams)[1]))
  bar = tqdm.tqdm(total=total, desc="inference", unit="frame",
                  disable=not progress)
  counts = {"frames": 0, "written": 0}

  def finish(batch, out):
    t0 = time.perf_counter()
    host = FrameModel.fetch(out, flow=tracker_flow)
    times["model"] += time.perf_counter() - t0
    flows = host.get("flow", batch.get("flow"))
    for g in range(streams):
      if not batch["valid"][g]:
        continue
      video = int(batch["video_id"][g])
      if video != current[g]:
        trackers[g].reset()
        current[g] = video
      h, w = (int(v) for v in batch["orig_size"][g])
      n = int(np.sum(host["valid"][g]))
      t0 = time.perf_counter()
      resolved = panoptic.resolve(
          host["panoptic"][g][:h, :w], host["semantic"][g][:h, :w],
          host["classes"][g], cfg.stuff_channels, cfg.thing_channels)
      t1 = time.perf_counter()
      dets = tracker_lib.Detections(
          host["boxes"][g][:n], host["scores"][g][:n],
          host["classes"][g][:n], host["embeddings"][g][:n],
          instance_map=resolved.instance_map,
          flow=flows[g][:h, :w] if flows is not None else None)
      ids = np.zeros(len(host["scores"][g]), np.int64)
      ids[:n] = trackers[g].assign(dets)
      t2 = time.perf_counter()
      seg_ids, table = panoptic.segments(
          resolved, ids, categories, cfg.thing_channels,
          config.inference.stuff_area_limit)
      t3 = time.perf_counter()
      image_id = image_ids[int(batch["record"][g])]
      annotated = bool(batch["annotated"][g])
      if annotated or write_all:
        writer.write(image_id, seg_ids, table)
        counts["written"] += 1
      t4 = time.perf_counter()
      times["fusion"] += (t1 - t0) + (t3 - t2)
      times["tracker"] += t2 - t1
      times["write"] += t4 - t3
      if on_frame is not None:
        on_frame(FrameResult(image_id, video, int(batch["frame_index"][g]),
                             annotated, seg_ids, table,
                             batch["image"][g][:h, :w]))
      counts["frames"] += 1
      bar.update(1)

  start = time.perf_counter()
  pending = None
  iterator = iter(tfds.as_numpy(dataset))
  try:
    while True:
      t0 = time.perf_counter()
      batch = next(iterator, None)
      times["input"] += time.perf_counter() - t0
      if batch is None:
        break
      flow = (quarter_flow(batch["flow"]) if "flow" in batch else np.zeros(
          batch["image"].shape[:3] + (2,), np.float32)[:, ::4, ::4])
      has_ref = batch["frame_index"] != batch["ref_frame_index"]
      out = model.dispatch(batch["image"], batch["orig_size"], flow, has_ref)
      if pending is not None:
        finish(*pending)
      pending = (batch, out)
    if pending is not None:
      finish(*pending)
  except BaseException as error:
    _close_after_failure(writer, error, counts["frames"], total)
    raise
  finally:
    bar.close()
  t0 = time.perf_counter()
  writer.close()
  times["write"] += time.perf_counter() - t0
  seconds = time.perf_counter() - start
  return dict(counts, seconds=seconds,
              fps=counts["frames"] / max(seconds, 1e-9), **times)


def _close_after_failure(writer: writers.PredictionWriter,
                         error: BaseException, done: int, total: int) -> None:
  """Writes pred.json for the frames done when inference failed; a failure
  to do so is logged and noted on `error` (which the caller re-raises)."""
  try:
    path = writer.close()
  except Exception as e:  # noqa: BLE001  # pylint: disable=broad-except
    logging.exception("Closing the prediction writer after %r also failed",
                      error)
    error.add_note(f"(closing the prediction writer also failed: {e!r})")
    return
  logging.error("Inference failed after %d of %d frames; %s lists the %d "
                "frames written", done, total, path, writer.num_written)
