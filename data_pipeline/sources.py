"""Where frames come from: the dataset registry and random-access sources.

  DATASETS[name]                    each dataset's reader module, validation
                                    split and download instructions
  open_split(config, workdir, split) -> (ReaderSource, FrameIndex)
                                    a validated split of config.dataset
  FolderSource(frames_dir)          a folder of ordered frames (one video;
                                    `--mode=predict`)
  ensure_synthetic(config, root)    the one rule for writing the built-in
                                    dataset: when `root` is missing or empty

Frames are read lazily from the folder's reader in `tfds_builders` format,
so no conversion step is needed. Errors a person can fix (a missing or
malformed folder) are `vpsnet_jax.errors.ConfigError`s that include the
dataset's manual-download instructions.
"""
import dataclasses
import functools
import importlib
import os
import shutil
import tempfile
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from data_pipeline import pipeline
from vpsnet_jax.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """module: `data_pipeline.<module>` with `META` and `reader(root, split)`;
  val_split: the split evaluated as validation; instructions: where the
  manual-download text lives ('module.attr' under data_pipeline);
  has_flow: the folder has the exact motion (`{split}/flow`);
  prediction_layout: the benchmark's prediction layout, which
  `--mode=evaluate` writes (`vpsnet_jax.inference.writers.LAYOUTS`) and
  `config.eval.protocol` must read."""
  module: str
  val_split: str
  instructions: str = ""
  has_flow: bool = False
  generated: bool = False
  prediction_layout: str = "cityscapes_vps"

  def load(self):
    return importlib.import_module(f"data_pipeline.{self.module}")

  def manual_download(self) -> str:
    if not self.instructions:
      return ""
    module, attr = self.instructions.rsplit(".", 1)
    text = importlib.import_module(f"data_pipeline.{module}")
    for part in attr.split(":"):
      text = getattr(text, part)
    return " ".join(text.split())


DATASETS = {
    "vps_synthetic": Dataset("synthetic", "val", has_flow=True,
                             generated=True),
    "cityscapes_vps": Dataset(
        "cityscapes_vps", "val",
        "tfds_builders.CityscapesVps:MANUAL_DOWNLOAD_INSTRUCTIONS"),
    "cityscapes": Dataset(
        "cityscapes", "val", "cityscapes.MANUAL_DOWNLOAD_INSTRUCTIONS"),
    "viper": Dataset("viper", "val_day",
                     "tfds_builders.Viper:MANUAL_DOWNLOAD_INSTRUCTIONS"),
    "vipseg": Dataset("vipseg", "val",
                      "tfds_builders.Vipseg:MANUAL_DOWNLOAD_INSTRUCTIONS",
                      prediction_layout="vipseg"),
    "kitti_step": Dataset(
        "kitti_step", "val",
        "tfds_builders.KittiStep:MANUAL_DOWNLOAD_INSTRUCTIONS",
        prediction_layout="kitti_step"),
}

# The prediction layout each evaluation protocol reads (`eval.protocols`
# for VPQ, `eval.stq` for kitti_step).
PROTOCOL_LAYOUTS = {"cityscapes_vps": "cityscapes_vps",
                    "viper": "cityscapes_vps", "vipseg": "vipseg",
                    "kitti_step": "kitti_step"}


def dataset(config) -> Dataset:
  name = config.dataset.name
  if name not in DATASETS:
    raise ConfigError(f"config.dataset.name must be one of {list(DATASETS)}, "
                      f"got {name!r}")
  return DATASETS[name]


def check_protocol(config) -> None:
  """ConfigError unless config.eval.protocol reads the layout that
  config.dataset's evaluation writes."""
  protocol = config.eval.protocol
  if protocol not in PROTOCOL_LAYOUTS:
    raise ConfigError(f"config.eval.protocol must be one of "
                      f"{list(PROTOCOL_LAYOUTS)}, got {protocol!r}")
  spec = dataset(config)
  if PROTOCOL_LAYOUTS[protocol] != spec.prediction_layout:
    fits = [p for p, lay in PROTOCOL_LAYOUTS.items()
            if lay == spec.prediction_layout]
    raise ConfigError(
        f"config.eval.protocol={protocol!r} does not evaluate "
        f"{config.dataset.name} (its ground truth is in the "
        f"{spec.prediction_layout} layout); use one of {fits}")


def data_dir(config, workdir: str) -> str:
  return config.dataset.data_dir or os.path.join(workdir, "data")


def meta(config):
  """The dataset's `metadata.DatasetMeta`."""
  return dataset(config).load().META


def ensure_synthetic(config, root: str, progress: bool = False) -> bool:
  """Writes vps_synthetic (config.dataset.synthetic, config.seed) to `root`
  when it is missing or empty; returns whether it wrote. A folder with other
  content is left alone (the reader then says what is missing).

  The dataset is written to a temporary sibling folder and renamed into
  place, so an interrupted write leaves nothing half-written at `root`,
  and several processes sharing a filesystem (multi-host training) may
  call this at once: one rename wins, the others discard their copy."""
  if os.path.isdir(root) and os.listdir(root):
    return False
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  s = config.dataset.synthetic
  root = os.path.abspath(root)
  os.makedirs(os.path.dirname(root), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".writing-",
                         dir=os.path.dirname(root))
  try:
    synthetic.write_dataset(tmp, s.num_train_videos, s.num_val_videos,
                            s.height, s.width, config.seed, progress=progress)
    os.chmod(tmp, 0o755)
    try:
      os.rename(tmp, root)  # Replaces a missing or empty `root` only.
    except OSError:
      if not (os.path.isdir(root) and os.listdir(root)):
        raise
      return False  # Another process's copy is in place.
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return True


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
    from data_pipeline.synthetic import flow  # pylint: disable=g-import-not-at-top
    return flow.load_flow_fields(
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
  spec = dataset(config)
  name = config.dataset.name
  root = data_dir(config, workdir)
  if split == "val":
    split = spec.val_split
  if spec.generated:
    ensure_synthetic(config, root)
  subset = config.dataset.get("subset", "")
  if subset and name != "viper":
    raise ConfigError(f"config.dataset.subset={subset!r}: only viper has "
                      "evaluation subsets")
  try:
    if subset and split == spec.val_split:
      reader = spec.load().reader(root, split, subset=subset)
    else:
      reader = spec.load().reader(root, split)
  except (FileNotFoundError, ValueError) as e:
    if spec.generated:
      raise ConfigError(
          f"{root} is not a {name} dataset ({e}); point "
          "config.dataset.data_dir at an empty folder (it is generated "
          "there) or a complete one") from e
    raise ConfigError(
        f"config.dataset.data_dir={root!r} is not a {name} folder in the "
        f"expected layout: {e}. {spec.manual_download()}") from e
  flow_dir = os.path.join(root, split, "flow") if spec.has_flow else None
  source = ReaderSource(reader, flow_dir)
  if not len(source):
    raise ConfigError(f"{root}: split {split!r} has no frames")
  index = source.index()
  if (name == "cityscapes" and split == "train" and
      tuple(config.input.ref_offsets) != (0,) and index.annotated.all()):
    raise ConfigError(
        f"{root} has no leftImg8bit_sequence/train: image-level Cityscapes "
        "takes its reference frames (config.input.ref_offsets="
        f"{tuple(config.input.ref_offsets)}) from the sequence frames. "
        f"{spec.manual_download()}")
  return source, index


class FolderSource:
  """A folder of ordered frames (one video) as a random-access source:
  sorted file names are the frame order, every frame counts as annotated."""

  def __init__(self, frames_dir: str):
    if not os.path.isdir(frames_dir):
      raise ConfigError(f"config.predict.frames_dir={frames_dir!r} is not a "
                        "folder")
    names = sorted(n for n in os.listdir(frames_dir)
                   if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
      raise ConfigError(f'{frames_dir} has no frames '
                        f'({", ".join(IMAGE_SUFFIXES)} files)')
    self.paths = [os.path.join(frames_dir, n) for n in names]
    self.image_ids = [os.path.splitext(n)[0] for n in names]

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    i = int(i)
    try:
      with Image.open(self.paths[i]) as img:
        image = np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises many types for bad files.
      raise ValueError(f"{self.paths[i]}: unreadable image: {e}") from e
    return {"image": image, "image_id": self.image_ids[i], "video_id": 1,
            "frame_index": i + 1, "annotated": True}

  def index(self) -> pipeline.FrameIndex:
    n = len(self.paths)
    return pipeline.FrameIndex(np.ones(n, np.int32),
                               np.arange(1, n + 1, dtype=np.int32),
                               np.ones(n, bool))
