"""Reader of datasets in the Cityscapes-VPS folder layout, with validation.

One split of a dataset is described by a `Layout` (which JSON files and
folders it has, relative to the dataset root); `cityscapes_vps.py`,
`viper.py` and the synthetic dataset only provide layouts and metadata.

Frames come from the all-frames list (`im_all_info_*.json` + `img_all/`) when
the split has one, otherwise from the annotated-image list. Annotations come
from one of two sources, as in the official release:

* panoptic (`panoptic_gt_*.json` + `panoptic_video/` RGB PNGs, segment id =
  R + 256 G + 65536 B, 0 = void), e.g. Cityscapes-VPS val;
* instances (`instances_*_rle.json`, COCO instances with RLE `segmentation`
  and a per-video `inst_id`, + `labelmap/` PNGs of semantic train ids, 255 =
  ignore), e.g. Cityscapes-VPS train.

Either is converted to one panoptic encoding (`Annotation.panoptic`):
int32 `train_id * 1000 + instance_id`, -1 for void. `instance_id` is a track
id 1..999 that names the same object in every frame of its video (0 for stuff
and crowd regions). Problems with the folder raise FileNotFoundError or
ValueError naming the offending file; nothing is guessed.
"""
import collections
import dataclasses
import json
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from data_pipeline import metadata
from eval import common

LABEL_DIVISOR = 1000
VOID = -1
_NAME = re.compile(r"^(\d{4})_(\d{4})_")
_IMAGE_SUFFIXES = ("_newImg8bit.png", "_leftImg8bit.png", ".png", ".jpg")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Paths of one split, relative to the dataset root; None if absent."""
  split: str
  images_dir: str
  all_images_dir: Optional[str] = None
  all_images_json: Optional[str] = None
  annotated_json: Optional[str] = None  # Annotated image list (no masks).
  instances_json: Optional[str] = None
  labelmap_dir: Optional[str] = None
  panoptic_json: Optional[str] = None
  panoptic_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Frame:
  """One frame of a video.

  image_id: file name without suffix, e.g. '0001_0005_frankfurt_000000_001736'.
  video_id, frame_index: the leading 4-digit numbers of `image_id`.
  image_path: absolute path of the RGB frame.
  annotated: whether `VpsReader.annotation` has labels for it.
  height, width: image size in pixels.
  """
  image_id: str
  video_id: int
  frame_index: int
  image_path: str
  annotated: bool
  height: int
  width: int


@dataclasses.dataclass
class Annotation:
  """Labels of an annotated frame.

  panoptic: int32 [H, W], train_id * 1000 + instance_id, -1 = void.
  segments: one dict per distinct panoptic value, sorted by it: {'id' (the
    panoptic value), 'category_id' (dataset id), 'train_id', 'instance_id'
    (0 for stuff and crowd), 'iscrowd' (1 for thing pixels without an
    instance: crowd regions), 'area' (pixels), 'bbox' ([x1, y1, x2, y2] float
    pixel edges, x2/y2 exclusive)}.
  """
  panoptic: np.ndarray
  segments: List[Dict[str, Any]]

  @property
  def semantic(self) -> np.ndarray:
    """uint8 [H, W] train ids, 255 = void."""
    return np.where(self.panoptic < 0, metadata.IGNORE_LABEL,
                    self.panoptic // LABEL_DIVISOR).astype(np.uint8)

  @property
  def instance(self) -> np.ndarray:
    """int32 [H, W] track ids, 0 = none."""
    return np.where(self.panoptic < 0, 0,
                    self.panoptic % LABEL_DIVISOR).astype(np.int32)


def image_id_of(file_name: str, source: str) -> str:
  """'x/0001_0005_a_newImg8bit.png' -> '0001_0005_a'; checks the pattern."""
  base = os.path.basename(file_name)
  for suffix in _IMAGE_SUFFIXES:
    if base.endswith(suffix):
      base = base[:-len(suffix)]
      break
  if not _NAME.match(base):
    raise ValueError(f"{source}: image name {file_name!r} does not start with "
                     "a 4-digit video id and a 4-digit frame index "
                     "(VVVV_FFFF_...)")
  return base


def load_json(path: str, keys: Tuple[str, ...]) -> Dict[str, Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing annotation file: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object at the top level")
  for key in keys:
    if key not in data or not isinstance(data[key], list):
      raise ValueError(f"{path}: missing list {key!r}")
  return data


def require_fields(items, fields, path, what):
  for item in items:
    missing = [f for f in fields if f not in item]
    if missing:
      raise ValueError(f"{path}: {what} {item!r:.200} lacks {missing}")


def _image_list(path: str) -> Iterator[Tuple[str, int, int, str]]:
  """(image id, height, width, file name) of each image of an image list."""
  data = load_json(path, ("images",))
  require_fields(data["images"], ("file_name", "width", "height"), path,
                  "image")
  for im in data["images"]:
    yield (image_id_of(im["file_name"], path), im["height"], im["width"],
           im["file_name"])


def read_png(path: str, frame: Frame, channels: Optional[Tuple[int, ...]],
              what: str, against: str = "the image size") -> np.ndarray:
  """The PNG at `path`, [H, W] if `channels` is None, else [H, W, C] with C in
  `channels` (else 'expected {what}'), of the frame's size."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing file: {path}")
  with Image.open(path) as im:
    array = np.asarray(im)
  if not (array.ndim == 2 if channels is None else
          array.ndim == 3 and array.shape[2] in channels):
    raise ValueError(f"{path}: expected {what}, got shape {array.shape}")
  if array.shape[:2] != (frame.height, frame.width):
    raise ValueError(f"{path}: size {array.shape[:2]} differs from "
                     f"{against} ({frame.height}, {frame.width})")
  return array


def _bbox_xyxy(mask: np.ndarray) -> List[float]:
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() + 1),
          float(ys.max() + 1)]


class VpsReader:
  """Lists the videos of one split and reads frame annotations.

  Construction validates the layout: every listed JSON file, image and mask
  file must exist and every JSON must have the expected fields.
  """

  def __init__(self, root: str, layout: Layout, meta: metadata.DatasetMeta,
               subset: Optional[Tuple[int, int]] = None):
    """Args:
      root: the dataset folder.
      layout: where the split's files are.
      meta: the dataset's classes.
      subset: (V, F): only the first V videos (by id) and the first F
        annotated frames of each (by frame index), as the paper's VIPER
        evaluation; a split with fewer videos, or a kept video with fewer
        annotated frames, is an error. None: everything.
    """
    if not os.path.isdir(root):
      raise FileNotFoundError(f"Dataset root is not a directory: {root}")
    if layout.panoptic_json and layout.instances_json:
      raise ValueError("A layout has one annotation source: panoptic_json or "
                       "instances_json, not both")
    self.root, self.layout, self.meta = root, layout, meta
    self._train_id = meta.id_to_train_id
    self._frames: Dict[str, Frame] = {}
    self._panoptic_anns: Dict[str, Dict[str, Any]] = {}
    self._instance_anns: Dict[str, List[Dict[str, Any]]] = {}
    self._tracks: Dict[int, Dict[int, int]] = {}  # video -> source id -> track
    annotated = self._read_annotations()
    self.subset = subset
    if subset is not None and layout.all_images_json:
      raise ValueError(f"a subset of split {layout.split!r} is not offered: "
                       "it lists unannotated frames too")
    if subset is not None:
      annotated = self._select(annotated, *subset)
    self._read_frames(annotated)
    self._assign_tracks()

  def _path(self, rel: str) -> str:
    return os.path.join(self.root, rel)

  def _load_coco(self, rel: str, annotation_fields: Tuple[str, ...]):
    """(path, data) of a COCO-style JSON, categories and fields checked."""
    path = self._path(rel)
    data = load_json(path, ("images", "annotations", "categories"))
    self._check_categories(path, data["categories"])
    require_fields(data["images"], ("id", "file_name", "width", "height"),
                    path, "image")
    require_fields(data["annotations"], annotation_fields, path, "annotation")
    return path, data

  def _check_categories(self, path: str, categories) -> None:
    """A JSON's categories: known ids, the metadata's thing flags."""
    require_fields(categories, ("id",), path, "category")
    for c in categories:
      if c["id"] not in self._train_id:
        raise ValueError(f'{path}: category id {c["id"]} is not a '
                         f'{self.meta.name} category')
      if "isthing" in c and bool(c["isthing"]) != self.meta.by_id[
          c["id"]].isthing:
        raise ValueError(f'{path}: category {c["id"]} has isthing='
                         f'{c["isthing"]}, metadata says otherwise')

  def _add_panoptic(self, iid: str, ann, png: str, path: str, name,
                    what: str) -> None:
    """Keeps the panoptic annotation `ann` of image `iid` after checking
    its segments' fields and categories and that its PNG exists; `name`
    and `what` word the errors."""
    require_fields(ann["segments_info"], ("id", "category_id"), path, what)
    for s in ann["segments_info"]:
      if s["category_id"] not in self._train_id:
        raise ValueError(f'{path}: segment {s["id"]} of {name} has unknown '
                         f'category_id {s["category_id"]}')
    if not os.path.isfile(png):
      raise FileNotFoundError(f"Missing panoptic PNG: {png} (listed in "
                              f"{path})")
    self._panoptic_anns[iid] = dict(ann, png=png)

  def _read_annotations(self) -> Dict[str, Tuple[int, int, str]]:
    """Reads the annotation JSON; returns image_id -> (h, w, image file)."""
    lay = self.layout
    annotated = {}
    if lay.panoptic_json:
      path, data = self._load_coco(
          lay.panoptic_json, ("image_id", "file_name", "segments_info"))
      images = {}
      for im in data["images"]:
        iid = image_id_of(im["file_name"], path)
        images[im["id"]] = iid
        annotated[iid] = (im["height"], im["width"], im["file_name"])
      if not lay.panoptic_dir:
        raise ValueError(f"Layout of split {lay.split!r} has a panoptic JSON "
                         "but no panoptic_dir")
      for ann in data["annotations"]:
        if ann["image_id"] not in images:
          raise ValueError(f'{path}: annotation for unknown image_id '
                           f'{ann["image_id"]!r}')
        self._add_panoptic(
            images[ann["image_id"]], ann,
            os.path.join(self._path(lay.panoptic_dir), ann["file_name"]),
            path, ann["image_id"], "segment")
      missing = set(annotated) - set(self._panoptic_anns)
      if missing:
        raise ValueError(f"{path}: images without annotation: "
                         f"{sorted(missing)[:5]}")
    elif lay.instances_json:
      path, data = self._load_coco(
          lay.instances_json,
          ("image_id", "category_id", "segmentation", "inst_id"))
      if not lay.labelmap_dir:
        raise ValueError(f"Layout of split {lay.split!r} has an instances JSON "
                         "but no labelmap_dir")
      images = {}
      for im in data["images"]:
        iid = image_id_of(im["file_name"], path)
        images[im["id"]] = iid
        annotated[iid] = (im["height"], im["width"], im["file_name"])
        self._instance_anns[iid] = []
        label = os.path.join(self._path(lay.labelmap_dir),
                             self._mask_name(im["file_name"]))
        if not os.path.isfile(label):
          raise FileNotFoundError(f'Missing label map: {label} (for image '
                                  f'{im["file_name"]} in {path})')
      for ann in data["annotations"]:
        if ann["image_id"] not in images:
          raise ValueError(f'{path}: annotation {ann.get("id")} refers to '
                           f'unknown image_id {ann["image_id"]}')
        if ann["category_id"] not in self.meta.thing_ids:
          raise ValueError(f'{path}: annotation {ann.get("id")} has '
                           f'category_id {ann["category_id"]}, not a thing')
        seg = ann["segmentation"]
        if not (isinstance(seg, dict) and "size" in seg and "counts" in seg):
          raise ValueError(f'{path}: annotation {ann.get("id")} segmentation '
                           'is not RLE (expected {"size", "counts"})')
        self._instance_anns[images[ann["image_id"]]].append(ann)
    elif lay.annotated_json:
      for iid, h, w, name in _image_list(self._path(lay.annotated_json)):
        annotated[iid] = (h, w, name)
    return annotated

  def _select(self, annotated, num_videos: int, num_frames: int):
    """The first `num_videos` videos' first `num_frames` annotated frames."""
    source = self._path(self.layout.panoptic_json or
                        self.layout.instances_json or
                        self.layout.annotated_json or "")
    by_video = collections.defaultdict(list)
    for iid in annotated:
      m = _NAME.match(iid)
      by_video[int(m.group(1))].append((int(m.group(2)), iid))
    videos = sorted(by_video)
    if len(videos) < num_videos:
      raise ValueError(f"{source}: the subset takes the first {num_videos} "
                       f"videos, but split {self.layout.split!r} has "
                       f"{len(videos)}")
    keep = set()
    for v in videos[:num_videos]:
      frames = sorted(by_video[v])
      if len(frames) < num_frames:
        raise ValueError(f"{source}: the subset takes the first {num_frames} "
                         f"annotated frames of each video, but video {v:04d} "
                         f"has {len(frames)}")
      keep.update(iid for _, iid in frames[:num_frames])
    for table in (self._panoptic_anns, self._instance_anns):
      for iid in list(table):
        if iid not in keep:
          del table[iid]
    return {iid: v for iid, v in annotated.items() if iid in keep}

  def write_panoptic_json(self, path: str) -> str:
    """Writes the split's panoptic ground truth, restricted to the frames
    this reader holds (its subset), for the evaluators; returns `path`."""
    if not self.layout.panoptic_json:
      raise ValueError(f"split {self.layout.split!r} has no panoptic JSON")
    src = self._path(self.layout.panoptic_json)
    data = load_json(src, ("images", "annotations", "categories"))
    images = [im for im in data["images"]
              if image_id_of(im["file_name"], src) in self._frames]
    kept = {im["id"] for im in images}
    out = dict(data, images=images,
               annotations=[a for a in data["annotations"]
                            if a["image_id"] in kept])
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(out, f)
    os.replace(tmp, path)
    return path

  def evaluation_ground_truth(self, workdir: str
                              ) -> Tuple[Optional[str], str]:
    """(ground-truth JSON, ground-truth PNG folder) for the evaluators;
    with a subset, the JSON of its frames, written to
    WORKDIR/ground_truth_subset.json."""
    lay = self.layout
    if not lay.panoptic_json or not lay.panoptic_dir:
      raise ValueError(f"split {lay.split!r} of {self.meta.name} has no "
                       "panoptic ground truth to evaluate against")
    gt_json = self._path(lay.panoptic_json)
    if self.subset is not None:
      os.makedirs(workdir, exist_ok=True)
      gt_json = self.write_panoptic_json(
          os.path.join(workdir, "ground_truth_subset.json"))
    return gt_json, self._path(lay.panoptic_dir)

  @staticmethod
  def _mask_name(image_file: str) -> str:
    base = os.path.basename(image_file)
    for old, new in (("_newImg8bit.png", "_final_mask.png"),
                     ("_leftImg8bit.png", "_gtFine_color.png")):
      if base.endswith(old):
        return base[:-len(old)] + new
    return os.path.splitext(base)[0] + ".png"

  def _add_frame(self, iid, h, w, folder, name, annotated, source):
    path = os.path.join(self._path(folder), os.path.basename(name))
    if iid in self._frames:
      raise ValueError(f"{source}: image {iid} is listed twice")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Missing image: {path} (listed in {source})")
    m = _NAME.match(iid)
    self._frames[iid] = Frame(iid, int(m.group(1)), int(m.group(2)), path,
                              annotated, int(h), int(w))

  def _read_frames(self, annotated):
    lay = self.layout
    has_labels = bool(lay.panoptic_json or lay.instances_json)
    if lay.all_images_json:
      path = self._path(lay.all_images_json)
      if not lay.all_images_dir:
        raise ValueError(f"Layout of split {lay.split!r} has all_images_json "
                         "but no all_images_dir")
      for iid, h, w, name in _image_list(path):
        self._add_frame(iid, h, w, lay.all_images_dir, name,
                        has_labels and iid in annotated, path)
      missing = set(annotated) - set(self._frames)
      if missing:
        raise ValueError(f"{path}: annotated images missing from the "
                         f"all-frames list: {sorted(missing)[:5]}")
    else:
      source = self._path(lay.panoptic_json or lay.instances_json or
                          lay.annotated_json or "")
      if not annotated:
        raise ValueError(f"Layout of split {lay.split!r} lists no frames")
      for iid, (h, w, name) in annotated.items():
        self._add_frame(iid, h, w, lay.images_dir, name, has_labels, source)

  def _assign_tracks(self):
    """Per video, numbers the thing instances 1, 2, ... in order of first
    appearance (frame, then source id)."""
    for iid in sorted(self._frames, key=lambda i: (
        self._frames[i].video_id, self._frames[i].frame_index)):
      frame = self._frames[iid]
      tracks = self._tracks.setdefault(frame.video_id, {})
      if iid in self._panoptic_anns:
        keys = sorted(s["id"] for s in self._panoptic_anns[iid]["segments_info"]
                      if self.meta.by_id[s["category_id"]].isthing
                      and not s.get("iscrowd", 0))
      elif iid in self._instance_anns:
        keys = sorted(a["inst_id"] for a in self._instance_anns[iid]
                      if not a.get("iscrowd", 0))
      else:
        keys = []
      for key in keys:
        if key not in tracks:
          tracks[key] = len(tracks) + 1
          if tracks[key] >= LABEL_DIVISOR:
            raise ValueError(f"Video {frame.video_id}: more than "
                             f"{LABEL_DIVISOR - 1} instances")

  # --------------------------------------------------------------------------

  def videos(self) -> Dict[int, List[Frame]]:
    """video id -> its frames sorted by frame index (annotated or not)."""
    out: Dict[int, List[Frame]] = {}
    for f in self._frames.values():
      out.setdefault(f.video_id, []).append(f)
    for frames in out.values():
      frames.sort(key=lambda f: f.frame_index)
      indices = [f.frame_index for f in frames]
      if len(set(indices)) != len(indices):
        raise ValueError(f"Video {frames[0].video_id} has two frames with "
                         f"the same index: {indices}")
    return dict(sorted(out.items()))

  def track_ids(self, video_id: int) -> Dict[int, int]:
    """Source instance id (segment id or inst_id) -> track id, per video."""
    return dict(self._tracks.get(video_id, {}))

  def read_image(self, frame: Frame) -> np.ndarray:
    """uint8 [H, W, 3] RGB; checks the size against the JSON."""
    image = read_png(frame.image_path, frame, (3, 4), "an RGB image",
                      "the JSON")
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)

  def annotation(self, frame: Frame) -> Annotation:
    """Labels of an annotated frame (ValueError if it is not annotated)."""
    if not frame.annotated:
      raise ValueError(f"Frame {frame.image_id} is not annotated")
    tracks = self._tracks.get(frame.video_id, {})
    if frame.image_id in self._panoptic_anns:
      return self._from_panoptic(frame, self._panoptic_anns[frame.image_id],
                                 tracks)
    return self._from_instances(frame, self._instance_anns[frame.image_id],
                                tracks)

  def _from_panoptic(self, frame, ann, tracks) -> Annotation:
    png = ann["png"]
    rgb = read_png(png, frame, (3, 4), "an RGB-encoded panoptic PNG")
    ids = common.rgb_to_ids(rgb[..., :3])
    infos = {}
    for s in ann["segments_info"]:
      if s["id"] in infos:
        raise ValueError(f'{png}: segment id {s["id"]} listed twice in '
                         'segments_info')
      infos[s["id"]] = s
    present = set(np.unique(ids).tolist()) - {metadata.VOID_SEGMENT_ID}
    if present != set(infos) - {metadata.VOID_SEGMENT_ID}:
      raise ValueError(
          f"{png}: segment ids in the PNG {sorted(present)[:10]} differ from "
          f"segments_info {sorted(infos)[:10]}")
    panoptic = np.full(ids.shape, VOID, np.int32)
    for sid in sorted(present):
      s = infos[sid]
      train = self._train_id[s["category_id"]]
      inst = tracks.get(sid, 0) if not s.get("iscrowd", 0) else 0
      panoptic[ids == sid] = train * LABEL_DIVISOR + inst
    return Annotation(panoptic, self._segment_table(panoptic))

  def _from_instances(self, frame, anns, tracks) -> Annotation:
    name = self._mask_name(frame.image_path)
    path = os.path.join(self._path(self.layout.labelmap_dir), name)
    labels = read_png(path, frame, None, "a single-channel label map")
    valid = set(range(self.meta.num_classes)) | {metadata.IGNORE_LABEL}
    bad = set(np.unique(labels).tolist()) - valid
    if bad:
      raise ValueError(f"{path}: values {sorted(bad)} are neither train ids "
                       f"0..{self.meta.num_classes - 1} nor 255")
    panoptic = np.where(labels == metadata.IGNORE_LABEL, VOID,
                        labels.astype(np.int32) * LABEL_DIVISOR)
    for a in anns:
      seg = a["segmentation"]
      if list(seg["size"]) != [frame.height, frame.width]:
        raise ValueError(f'RLE of annotation {a.get("id")} ({frame.image_id}) '
                         f'has size {seg["size"]}, image is '
                         f'{[frame.height, frame.width]}')
      rle = seg
      if isinstance(seg["counts"], list):
        rle = mask_util.frPyObjects(seg, frame.height, frame.width)
      mask = mask_util.decode(rle).astype(bool)
      train = self._train_id[a["category_id"]]
      inst = 0 if a.get("iscrowd", 0) else tracks[a["inst_id"]]
      panoptic[mask] = train * LABEL_DIVISOR + inst
    return Annotation(panoptic, self._segment_table(panoptic))

  def _segment_table(self, panoptic) -> List[Dict]:
    """One row per distinct panoptic value present in the map."""
    rows = []
    values, counts = np.unique(panoptic, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist()):
      if value < 0:
        continue
      train, inst = divmod(value, LABEL_DIVISOR)
      category = self.meta.categories[train]
      rows.append({
          "id": value, "category_id": category.id, "train_id": train,
          "instance_id": inst, "iscrowd": int(category.isthing and inst == 0),
          "area": count, "bbox": _bbox_xyxy(panoptic == value)})
    return rows
