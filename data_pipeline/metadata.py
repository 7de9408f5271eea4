"""Category metadata of the supported datasets.

Every dataset is described by a `DatasetMeta`: its categories (dataset ids,
names, thing/stuff flags, display colours) in the order of the contiguous
train ids the model predicts. Category id 0 is a real class in
Cityscapes-VPS and in the synthetic dataset (road); Cityscapes uses the
official label ids (7-33), which differ from its train ids. Void is never a
category id: it is the segment id 0 in RGB-encoded panoptic PNGs and the
label 255 in semantic label maps.
"""
import dataclasses
from typing import Dict, Tuple

IGNORE_LABEL = 255  # Semantic label maps: pixels not to train or evaluate on.
VOID_SEGMENT_ID = 0  # RGB-encoded panoptic PNGs: void pixels.


@dataclasses.dataclass(frozen=True)
class Category:
  id: int
  name: str
  isthing: bool
  color: Tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """Categories of a dataset, ordered by contiguous train id."""
  name: str
  categories: Tuple[Category, ...]

  @property
  def num_classes(self) -> int:
    return len(self.categories)

  @property
  def thing_ids(self) -> Tuple[int, ...]:
    return tuple(c.id for c in self.categories if c.isthing)

  @property
  def stuff_ids(self) -> Tuple[int, ...]:
    return tuple(c.id for c in self.categories if not c.isthing)

  @property
  def id_to_train_id(self) -> Dict[int, int]:
    return {c.id: i for i, c in enumerate(self.categories)}

  @property
  def by_id(self) -> Dict[int, Category]:
    return {c.id: c for c in self.categories}

  def coco_categories(self, things_only: bool = False):
    """Categories as COCO-style JSON dicts {"id", "name", "isthing",
    "color"}."""
    return [{"id": c.id, "name": c.name, "isthing": int(c.isthing),
             "color": list(c.color)}
            for c in self.categories if c.isthing or not things_only]


def _cats(rows):
  return tuple(Category(i, n, bool(t), tuple(c)) for i, n, t, c in rows)


# Cityscapes-VPS: the 19 Cityscapes evaluation classes, ids 0-18 (== train
# ids), things 11-18.
CITYSCAPES_VPS = DatasetMeta("cityscapes_vps", _cats([
    (0, "road", 0, (128, 64, 128)),
    (1, "sidewalk", 0, (244, 35, 232)),
    (2, "building", 0, (70, 70, 70)),
    (3, "wall", 0, (102, 102, 156)),
    (4, "fence", 0, (190, 153, 153)),
    (5, "pole", 0, (153, 153, 153)),
    (6, "traffic light", 0, (250, 170, 30)),
    (7, "traffic sign", 0, (220, 220, 0)),
    (8, "vegetation", 0, (107, 142, 35)),
    (9, "terrain", 0, (152, 251, 152)),
    (10, "sky", 0, (70, 130, 180)),
    (11, "person", 1, (220, 20, 60)),
    (12, "rider", 1, (255, 0, 0)),
    (13, "car", 1, (0, 0, 142)),
    (14, "truck", 1, (0, 0, 70)),
    (15, "bus", 1, (0, 60, 100)),
    (16, "train", 1, (0, 80, 100)),
    (17, "motorcycle", 1, (0, 0, 230)),
    (18, "bicycle", 1, (119, 11, 32)),
]))

# Cityscapes (official panoptic layout, cityscapesScripts'
# `createPanopticImgs`): the same 19 classes, order and colours as
# Cityscapes-VPS, with the official label ids (road 7 ... bicycle 33) as
# category ids.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                        27, 28, 31, 32, 33)
CITYSCAPES = DatasetMeta("cityscapes", tuple(
    dataclasses.replace(c, id=i)
    for c, i in zip(CITYSCAPES_VPS.categories, CITYSCAPES_LABEL_IDS)))

# VIPER in the reformatted video-panoptic layout of the VPSNet release: 23
# classes, ids 0-22, 13 stuff (0-12) then 10 things (13-22).
VIPER = DatasetMeta("viper", _cats([
    (0, "sky", 0, (70, 130, 180)),
    (1, "road", 0, (128, 64, 128)),
    (2, "sidewalk", 0, (244, 35, 232)),
    (3, "terrain", 0, (152, 251, 152)),
    (4, "tree", 0, (87, 182, 35)),
    (5, "vegetation", 0, (35, 142, 35)),
    (6, "building", 0, (70, 70, 70)),
    (7, "infrastructure", 0, (153, 153, 153)),
    (8, "fence", 0, (190, 153, 153)),
    (9, "billboard", 0, (150, 20, 20)),
    (10, "trafficsign", 0, (220, 220, 0)),
    (11, "mobilebarrier", 0, (180, 180, 100)),
    (12, "trash", 0, (81, 0, 21)),
    (13, "trafficlight", 1, (250, 170, 30)),
    (14, "firehydrant", 1, (173, 153, 153)),
    (15, "chair", 1, (168, 153, 153)),
    (16, "trashcan", 1, (81, 0, 81)),
    (17, "person", 1, (220, 20, 60)),
    (18, "motorcycle", 1, (0, 0, 230)),
    (19, "car", 1, (0, 0, 142)),
    (20, "van", 1, (0, 80, 100)),
    (21, "bus", 1, (0, 60, 100)),
    (22, "truck", 1, (0, 0, 70)),
]))

# The built-in synthetic dataset (`data_pipeline.synthetic`): 5 stuff and 3
# thing classes, ids 0-7 (== train ids).
SYNTHETIC = DatasetMeta("vps_synthetic", _cats([
    (0, "road", 0, (128, 64, 128)),
    (1, "sidewalk", 0, (244, 35, 232)),
    (2, "building", 0, (70, 70, 70)),
    (3, "vegetation", 0, (107, 142, 35)),
    (4, "sky", 0, (70, 130, 180)),
    (5, "person", 1, (220, 20, 60)),
    (6, "car", 1, (0, 0, 142)),
    (7, "truck", 1, (0, 0, 70)),
]))

DATASETS = {m.name: m for m in (CITYSCAPES_VPS, CITYSCAPES, VIPER,
                                  SYNTHETIC)}


def get(name: str) -> DatasetMeta:
  """Metadata by dataset name ('cityscapes_vps', 'cityscapes', 'viper',
  'vps_synthetic')."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}")
  return DATASETS[name]
