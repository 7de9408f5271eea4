"""tensorflow-datasets builders: cityscapes_vps, viper, vipseg, kitti_step and
vps_synthetic.

Each converts a dataset folder once into TFRecord or ArrayRecord shards
(`file_format=`), one example per frame, annotated or not, keyed by image id:

  'image':       uint8 [H, W, 3] (PNG-encoded)
  'image_id':    string, e.g. '0001_0005_frankfurt_000000_001736'
                 (VIPSeg '<video>/<frame>', KITTI-STEP '<sequence>/<frame>')
  'video_id':    int32, 'frame_index': int32 (1-based within the snippet)
  'annotated':   bool
  'panoptic':    int32 [H, W] = train_id * 1000 + instance_id, -1 = void
                 (all -1 when the frame is not annotated); instance ids are
                 track ids 1..999, the same object in every frame of a video,
                 0 for stuff and crowd regions
  'segments':    sequence of {'id' (the panoptic value), 'category_id'
                 (dataset id), 'train_id', 'instance_id', 'iscrowd' (bool),
                 'area' (int32 pixels), 'bbox' (float32 [4], x1, y1, x2, y2
                 pixel edges)}, empty when not annotated

vps_synthetic adds the exact motion of every pixel (see
`data_pipeline.synthetic`): 'flow_layer' (int32 [H, W], the rigid layer seen
at each pixel) and 'flow_offsets' (int32 [L, 2], each layer's (dy, dx)
position in this frame). The flow from frame a to frame b of a video is
`offsets_b[layer_a] - offsets_a[layer_a]` per pixel (as (dy, dx)).

Usage:
  builder = tfds_builders.CityscapesVps(data_dir=DATA_DIR)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=CITYSCAPES_VPS_ROOT))
  ds = builder.as_dataset(split='val')
"""
import dataclasses
import os
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import cityscapes_vps
from data_pipeline import kitti_step
from data_pipeline import synthetic
from data_pipeline import viper
from data_pipeline import vipseg
from data_pipeline import vps_reader

_CITATION = """@inproceedings{kim2020vps,
  title={Video Panoptic Segmentation},
  author={Kim, Dahun and Woo, Sanghyun and Lee, Joon-Young and Kweon, In So},
  booktitle={CVPR}, year={2020}}"""


def _features(with_flow: bool) -> tfds.features.FeaturesDict:
  feats = {
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      "image_id": tfds.features.Text(),
      "video_id": np.int32,
      "frame_index": np.int32,
      "annotated": np.bool_,
      "panoptic": tfds.features.Tensor(shape=(None, None), dtype=np.int32,
                                       encoding="zlib"),
      "segments": tfds.features.Sequence({
          "id": np.int32,
          "category_id": np.int32,
          "train_id": np.int32,
          "instance_id": np.int32,
          "iscrowd": np.bool_,
          "area": np.int32,
          "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
      }),
  }
  if with_flow:
    feats["flow_layer"] = tfds.features.Tensor(
        shape=(None, None), dtype=np.int32, encoding="zlib")
    feats["flow_offsets"] = tfds.features.Tensor(shape=(None, 2),
                                                 dtype=np.int32)
  return tfds.features.FeaturesDict(feats)


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders below.

  tensorflow-datasets 4.9.10 looks a builder's source file up through
  `importlib_resources`, which it declares only for Python < 3.9; naming the
  file here avoids that import (there are no checksum files to find).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def _generate_examples(self, reader):
    """Every frame of a reader's split (annotated or not), keyed by image
    id; the synthetic builder overrides this."""
    for frames in reader.videos().values():
      for frame in frames:
        yield frame.image_id, frame_example(reader, frame)


def frame_example(reader: vps_reader.VpsReader, frame: vps_reader.Frame):
  """The feature dict of one frame (numpy values, see the module docstring)."""
  image = reader.read_image(frame)
  segments = []
  if frame.annotated:
    ann = reader.annotation(frame)
    panoptic = ann.panoptic
    segments = [{"id": s["id"], "category_id": s["category_id"],
                 "train_id": s["train_id"], "instance_id": s["instance_id"],
                 "iscrowd": bool(s["iscrowd"]), "area": s["area"],
                 "bbox": np.asarray(s["bbox"], np.float32)}
                for s in ann.segments]
  else:
    panoptic = np.full(image.shape[:2], vps_reader.VOID, np.int32)
  return {
      "image": image, "image_id": frame.image_id,
      "video_id": np.int32(frame.video_id),
      "frame_index": np.int32(frame.frame_index),
      "annotated": frame.annotated, "panoptic": panoptic,
      "segments": segments,
  }


class CityscapesVps(_Builder):
  """Cityscapes-VPS (Kim et al., CVPR 2020) from its prepared folder."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Prepare Cityscapes-VPS with the official scripts of the VPSNet release
  (github.com/mcahny/vps, docs/DATASET.md): download Cityscapes-VPS and
  Cityscapes' leftImg8bit_sequence + gtFine, run prepare_city_vps/*.py. Pass
  the resulting `cityscapes_vps/` folder as `manual_dir`; it must contain
  instances_train_city_vps_rle.json, panoptic_gt_val_city_vps.json,
  im_all_info_{val,test}_city_vps.json, train/{img,labelmap},
  val/{img_all,panoptic_video} and test/img_all.
  """
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="full", description="train, val, test"),
      tfds.core.BuilderConfig(name="trainval", description="train, val"),
  ]

  def _info(self):
    return self.dataset_info_from_configs(
        description="Cityscapes-VPS: 30-frame snippets, every 5th frame "
        "annotated with video panoptic labels.",
        features=_features(with_flow=False),
        homepage="https://github.com/mcahny/vps", citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    splits = ("train", "val") if self.builder_config.name == "trainval" else (
        cityscapes_vps.SPLITS)
    return {s: self._generate_examples(cityscapes_vps.reader(root, s))
            for s in splits}


class _FolderBuilder(_Builder, skip_registration=True):
  """A dataset folder read by `READER` (a data_pipeline module with
  `reader(root, split)` and `SPLITS`), every split converted."""

  READER = None
  DESCRIPTION = ""
  HOMEPAGE = ""

  def _info(self):
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION, features=_features(with_flow=False),
        homepage=self.HOMEPAGE, citation=_CITATION)

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    return {s: self._generate_examples(self.READER.reader(root, s))
            for s in self.READER.SPLITS}


class Viper(_FolderBuilder):
  """VIPER in the reformatted video-panoptic layout of the VPSNet release."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download VIPER (playing-for-benchmarks.org) and reformat it to the VPS
  layout of the VPSNet release; pass that folder as `manual_dir`. It must
  contain instances_train_05_viper_coco.json (RLE masks with inst_id),
  train/{img,labelmap}, viper_panoptic_val_day_video.json and
  val_day/{img,panoptic_video}; image names start with VVVV_FFFF_.
  """
  READER = viper
  DESCRIPTION = "VIPER video panoptic segmentation (23 classes)."
  HOMEPAGE = "https://playing-for-benchmarks.org"


class Vipseg(_FolderBuilder):
  """VIPSeg (Miao et al., CVPR 2022) from the 720P folder of its scripts."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download VIPSeg (github.com/VIPSeg-Dataset/VIPSeg-Dataset, README) and
  run its scripts change2_720p.py, create_panoptic_video_labels.py and
  splitjson.py; pass the resulting VIPSeg_720P folder as `manual_dir`. It
  must contain images/<video>/<frame>.jpg, panomasksRGB/<video>/<frame>.png
  and panoptic_gt_VIPSeg_{train,val}.json.
  """
  READER = vipseg
  DESCRIPTION = ("VIPSeg video panoptic segmentation (124 classes, every "
                 "frame annotated).")
  HOMEPAGE = "https://github.com/VIPSeg-Dataset/VIPSeg-Dataset"


class KittiStep(_FolderBuilder):
  """KITTI-STEP (Weber et al., 2021) from the folder of its release."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the KITTI-STEP panoptic maps (www.cvlibs.net/datasets/kitti/
  eval_step.php) and the KITTI tracking images, arranged as in deeplab2's
  g3doc/setup/kitti_step.md; pass the folder as `manual_dir`. It must
  contain images/{train,val}/<sequence>/<frame>.png and
  panoptic_maps/{train,val}/<sequence>/<frame>.png (4-digit sequences,
  6-digit frames).
  """
  READER = kitti_step
  DESCRIPTION = "KITTI-STEP: every frame labelled, person and car tracked."
  HOMEPAGE = "https://www.cvlibs.net/datasets/kitti/eval_step.php"


@dataclasses.dataclass(eq=False)
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
  height: int = 128
  width: int = 256
  num_videos: int = 8
  num_val_videos: int = 4
  seed: int = 0


class VpsSynthetic(_Builder):
  """The built-in synthetic VPS dataset, generated on the fly (no download)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticBuilderConfig(name="tiny", height=64, width=128, num_videos=2,
                             num_val_videos=1),
      SyntheticBuilderConfig(name="small", height=128, width=256,
                             num_videos=8, num_val_videos=4),
      SyntheticBuilderConfig(name="cityscapes_size", height=1024, width=2048,
                             num_videos=40, num_val_videos=10),
  ]
  DEFAULT_CONFIG_NAME = "small"

  def _info(self):
    return self.dataset_info_from_configs(
        description="vps_synthetic: driving-like synthetic video panoptic "
        "segmentation with exact optical flow.",
        features=_features(with_flow=True), citation=_CITATION)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = os.path.join(str(dl_manager.download_dir),
                        f"vps_synthetic_{cfg.name}_seed{cfg.seed}")
    synthetic.write_dataset(root, cfg.num_videos, cfg.num_val_videos,
                            cfg.height, cfg.width, cfg.seed, progress=False)
    return {s: self._generate_examples(root, s) for s in synthetic.SPLITS}

  def _generate_examples(self, root, split):
    reader = synthetic.reader(root, split)
    for vid, frames in reader.videos().items():
      fields = synthetic.load_flow_fields(
          os.path.join(root, split, "flow", f"{vid:04d}.npz"))
      for frame in frames:
        example = frame_example(reader, frame)
        t = frame.frame_index - 1
        example["flow_layer"] = fields["layer"][t].astype(np.int32)
        example["flow_offsets"] = fields["offsets"][:, t].astype(np.int32)
        yield frame.image_id, example


def flow_from_offsets(layer_a: np.ndarray, offsets_a: np.ndarray,
                      offsets_b: np.ndarray) -> np.ndarray:
  """Flow float32 [H, W, 2] as (dx, dy) from frame a to frame b (synthetic).

  Args:
    layer_a: int [H, W], 'flow_layer' of frame a.
    offsets_a, offsets_b: int [L, 2], 'flow_offsets' of frames a and b.
  """
  delta = (np.asarray(offsets_b) - np.asarray(offsets_a))[layer_a]
  return np.stack([delta[..., 1], delta[..., 0]], -1).astype(np.float32)
