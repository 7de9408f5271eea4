"""VIPER in the reformatted video-panoptic layout of the VPSNet release.

  ROOT/instances_train_05_viper_coco.json   COCO instances (RLE only), inst_id
  ROOT/train/img/, ROOT/train/labelmap/      annotated frames, train ids
  ROOT/viper_panoptic_val_day_video.json     VPQ ground truth, val "day"
  ROOT/val_day/img/, ROOT/val_day/panoptic_video/

Image names must start with a 4-digit video id and a 4-digit frame index
(VVVV_FFFF_...), as in Cityscapes-VPS; anything else is reported, not
guessed. 23 classes (metadata.VIPER): 13 stuff, 10 things.

The paper evaluates on a subset of val_day: "10 validation videos from *day*
scenario, ... the first 60 frames of each": `reader(root, "val_day",
subset="paper")`. The paper does not name the 10 videos; the subset takes
the first 10 by video id (the release's prepared JSON, not published, may
hold others).
"""
from data_pipeline import cityscapes_vps
from data_pipeline import metadata
from data_pipeline import vps_reader

META = metadata.VIPER
SPLITS = ("train", "val_day")
# Evaluation subsets of val_day: (videos, annotated frames per video).
SUBSETS = {"paper": (10, 60)}


def layout(split: str) -> vps_reader.Layout:
  """The layout of `split` ('train' or 'val_day')."""
  if split == "train":
    return cityscapes_vps.split_layout(
        "train", instances_json="instances_train_05_viper_coco.json")
  if split == "val_day":
    return cityscapes_vps.split_layout(
        "val_day", panoptic_json="viper_panoptic_val_day_video.json")
  raise ValueError(f"VIPER split must be one of {SPLITS}, got {split!r}")


def reader(root: str, split: str, subset: str = "") -> vps_reader.VpsReader:
  """A validated reader of `split` under the dataset folder `root`;
  `subset` ("" for all, or a name of `SUBSETS`) restricts val_day."""
  if not subset:
    return vps_reader.VpsReader(root, layout(split), META)
  if subset not in SUBSETS:
    raise ValueError(f"unknown VIPER subset {subset!r}; expected one of "
                     f"{sorted(SUBSETS)}")
  if split != "val_day":
    raise ValueError(f"the VIPER subset {subset!r} is of val_day, not "
                     f"{split!r}")
  return vps_reader.VpsReader(root, layout(split), META,
                              subset=SUBSETS[subset])
