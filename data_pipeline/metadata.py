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

# VIPSeg (Miao et al., CVPR 2022), `panoVIPSeg_categories.json` of its
# release: 124 classes, ids 0-123 (== train ids), 58 things; its own
# converter (`create_panoptic_video_labels.py`) writes these categories
# into the panoptic JSON, which the reader checks against this table.
VIPSEG = DatasetMeta("vipseg", _cats([
    (0, "wall", 0, (120, 120, 120)),
    (1, "ceiling", 0, (180, 120, 120)),
    (2, "door", 1, (6, 230, 230)),
    (3, "stair", 0, (80, 50, 50)),
    (4, "ladder", 1, (4, 200, 3)),
    (5, "escalator", 0, (120, 120, 80)),
    (6, "Playground_slide", 0, (140, 140, 140)),
    (7, "handrail_or_fence", 0, (204, 5, 255)),
    (8, "window", 1, (230, 230, 230)),
    (9, "rail", 0, (4, 250, 7)),
    (10, "goal", 1, (224, 5, 255)),
    (11, "pillar", 0, (235, 255, 7)),
    (12, "pole", 0, (150, 5, 61)),
    (13, "floor", 0, (120, 120, 70)),
    (14, "ground", 0, (8, 255, 51)),
    (15, "grass", 0, (255, 6, 82)),
    (16, "sand", 0, (143, 255, 140)),
    (17, "athletic_field", 0, (204, 255, 4)),
    (18, "road", 0, (255, 51, 7)),
    (19, "path", 0, (204, 70, 3)),
    (20, "crosswalk", 0, (0, 102, 200)),
    (21, "building", 0, (61, 230, 250)),
    (22, "house", 0, (255, 6, 51)),
    (23, "bridge", 0, (11, 102, 255)),
    (24, "tower", 0, (255, 7, 71)),
    (25, "windmill", 0, (255, 9, 224)),
    (26, "well_or_well_lid", 0, (9, 7, 230)),
    (27, "other_construction", 0, (220, 220, 220)),
    (28, "sky", 0, (255, 9, 92)),
    (29, "mountain", 0, (112, 9, 255)),
    (30, "stone", 0, (8, 255, 214)),
    (31, "wood", 0, (7, 255, 224)),
    (32, "ice", 0, (255, 184, 6)),
    (33, "snowfield", 0, (10, 255, 71)),
    (34, "grandstand", 0, (255, 41, 10)),
    (35, "sea", 0, (7, 255, 255)),
    (36, "river", 0, (224, 255, 8)),
    (37, "lake", 0, (102, 8, 255)),
    (38, "waterfall", 0, (255, 61, 6)),
    (39, "water", 0, (255, 194, 7)),
    (40, "billboard_or_Bulletin_Board", 0, (255, 122, 8)),
    (41, "sculpture", 1, (0, 255, 20)),
    (42, "pipeline", 0, (255, 8, 41)),
    (43, "flag", 1, (255, 5, 153)),
    (44, "parasol_or_umbrella", 1, (6, 51, 255)),
    (45, "cushion_or_carpet", 0, (235, 12, 255)),
    (46, "tent", 1, (160, 150, 20)),
    (47, "roadblock", 1, (0, 163, 255)),
    (48, "car", 1, (140, 140, 140)),
    (49, "bus", 1, (250, 10, 15)),
    (50, "truck", 1, (20, 255, 0)),
    (51, "bicycle", 1, (31, 255, 0)),
    (52, "motorcycle", 1, (255, 31, 0)),
    (53, "wheeled_machine", 0, (255, 224, 0)),
    (54, "ship_or_boat", 1, (153, 255, 0)),
    (55, "raft", 1, (0, 0, 255)),
    (56, "airplane", 1, (255, 71, 0)),
    (57, "tyre", 0, (0, 235, 255)),
    (58, "traffic_light", 0, (0, 173, 255)),
    (59, "lamp", 0, (31, 0, 255)),
    (60, "person", 1, (11, 200, 200)),
    (61, "cat", 1, (255, 82, 0)),
    (62, "dog", 1, (0, 255, 245)),
    (63, "horse", 1, (0, 61, 255)),
    (64, "cattle", 1, (0, 255, 112)),
    (65, "other_animal", 1, (0, 255, 133)),
    (66, "tree", 0, (255, 0, 0)),
    (67, "flower", 0, (255, 163, 0)),
    (68, "other_plant", 0, (255, 102, 0)),
    (69, "toy", 0, (194, 255, 0)),
    (70, "ball_net", 0, (0, 143, 255)),
    (71, "backboard", 0, (51, 255, 0)),
    (72, "skateboard", 1, (0, 82, 255)),
    (73, "bat", 0, (0, 255, 41)),
    (74, "ball", 1, (0, 255, 173)),
    (75, "cupboard_or_showcase_or_storage_rack", 0, (10, 0, 255)),
    (76, "box", 1, (173, 255, 0)),
    (77, "traveling_case_or_trolley_case", 1, (0, 255, 153)),
    (78, "basket", 1, (255, 92, 0)),
    (79, "bag_or_package", 1, (255, 0, 255)),
    (80, "trash_can", 0, (255, 0, 245)),
    (81, "cage", 0, (255, 0, 102)),
    (82, "plate", 1, (255, 173, 0)),
    (83, "tub_or_bowl_or_pot", 1, (255, 0, 20)),
    (84, "bottle_or_cup", 1, (255, 184, 184)),
    (85, "barrel", 1, (0, 31, 255)),
    (86, "fishbowl", 1, (0, 255, 61)),
    (87, "bed", 1, (0, 71, 255)),
    (88, "pillow", 1, (255, 0, 204)),
    (89, "table_or_desk", 1, (0, 255, 194)),
    (90, "chair_or_seat", 1, (0, 255, 82)),
    (91, "bench", 1, (0, 10, 255)),
    (92, "sofa", 1, (0, 112, 255)),
    (93, "shelf", 0, (51, 0, 255)),
    (94, "bathtub", 0, (0, 194, 255)),
    (95, "gun", 1, (0, 122, 255)),
    (96, "commode", 1, (0, 255, 163)),
    (97, "roaster", 1, (255, 153, 0)),
    (98, "other_machine", 0, (0, 255, 10)),
    (99, "refrigerator", 1, (255, 112, 0)),
    (100, "washing_machine", 1, (143, 255, 0)),
    (101, "Microwave_oven", 1, (82, 0, 255)),
    (102, "fan", 1, (163, 255, 0)),
    (103, "curtain", 0, (255, 235, 0)),
    (104, "textiles", 0, (8, 184, 170)),
    (105, "clothes", 0, (133, 0, 255)),
    (106, "painting_or_poster", 1, (0, 255, 92)),
    (107, "mirror", 1, (184, 0, 255)),
    (108, "flower_pot_or_vase", 1, (255, 0, 31)),
    (109, "clock", 1, (0, 184, 255)),
    (110, "book", 0, (0, 214, 255)),
    (111, "tool", 0, (255, 0, 112)),
    (112, "blackboard", 0, (92, 255, 0)),
    (113, "tissue", 0, (0, 224, 255)),
    (114, "screen_or_television", 1, (112, 224, 255)),
    (115, "computer", 1, (70, 184, 160)),
    (116, "printer", 1, (163, 0, 255)),
    (117, "Mobile_phone", 1, (153, 0, 255)),
    (118, "keyboard", 1, (71, 255, 0)),
    (119, "other_electronic_product", 0, (255, 0, 163)),
    (120, "fruit", 0, (255, 204, 0)),
    (121, "food", 0, (255, 0, 143)),
    (122, "instrument", 1, (0, 255, 235)),
    (123, "train", 1, (133, 255, 0)),
]))

# KITTI-STEP (Weber et al., NeurIPS 2021 datasets track): the 19 Cityscapes
# evaluation classes (ids == train ids, as in its panoptic maps' R channel),
# of which only person and car carry instances (deeplab2's
# `kitti_step` dataset info); the other Cityscapes thing classes are stuff.
KITTI_STEP_THINGS = (11, 13)
KITTI_STEP = DatasetMeta("kitti_step", tuple(
    dataclasses.replace(c, isthing=c.id in KITTI_STEP_THINGS)
    for c in CITYSCAPES_VPS.categories))

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

DATASETS = {m.name: m for m in (CITYSCAPES_VPS, CITYSCAPES, VIPER, VIPSEG,
                                  KITTI_STEP, SYNTHETIC)}


def get(name: str) -> DatasetMeta:
  """Metadata by dataset name ('cityscapes_vps', 'cityscapes', 'viper',
  'vipseg', 'kitti_step', 'vps_synthetic')."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}")
  return DATASETS[name]
