"""Cityscapes (image-level panoptic) in its official folder layout.

  ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
  ROOT/leftImg8bit_sequence/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
                                      30-frame snippets (optional folder)
  ROOT/gtFine/cityscapes_panoptic_{split}.json
  ROOT/gtFine/cityscapes_panoptic_{split}/
      {city}_{seq}_{frame}_gtFine_panoptic.png

`{seq}` and `{frame}` are 6-digit numbers; the panoptic files are those of
cityscapesScripts' `createPanopticImgs` (RGB segment ids, id = R + 256 G +
65536 B, 0 = void; category ids are the official label ids, see
`metadata.CITYSCAPES`; thing segments with iscrowd=1 are crowd regions).

Each annotated image is one video (video ids 1, 2, ... in sorted image-id
order). Its frames are the annotated frame (`frame_index` 20, image id as in
the JSON, e.g. 'frankfurt_000000_000294') and, when
`leftImg8bit_sequence/{split}` exists, the other 29 frames of its snippet
(`frame - 19 .. frame + 10`, frame indices 1..30, unannotated, image ids
'{city}_{seq}_{frame:06d}'): the reference frames of image-level training
with feature fusion. Evaluation splits keep only the frame before the
annotated one (index 19, the online reference of frame 20): image PQ needs
nothing else. Instance ids are numbered 1, 2, ... per image.
Problems raise FileNotFoundError or ValueError naming the file.
"""
import os
import re
from typing import Dict, Set, Tuple

from data_pipeline import metadata
from data_pipeline import vps_reader

META = metadata.CITYSCAPES
SPLITS = ("train", "val")
SNIPPET_LENGTH = 30
ANNOTATED_INDEX = 20  # 1-based position of the annotated frame.
_IMAGE_ID = re.compile(r"^(.+)_(\d{6})_(\d{6})$")
_IMAGE_SUFFIX = "_leftImg8bit.png"

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download from https://www.cityscapes-dataset.com/downloads/ (free account)
leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, and optionally
leftImg8bit_sequence_trainvaltest.zip (the unannotated neighbouring frames
used as reference frames by the variants that fuse), and unzip them into one
folder ROOT. Make the panoptic ground truth with cityscapesScripts:
`pip install cityscapesscripts; CITYSCAPES_DATASET=ROOT csCreatePanopticImgs`
(it writes ROOT/gtFine/cityscapes_panoptic_{train,val}.json and
ROOT/gtFine/cityscapes_panoptic_{train,val}/). Point
config.dataset.data_dir at ROOT; it must contain
leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and those panoptic files.
"""


def layout(split: str) -> vps_reader.Layout:
  """The official layout of `split` ('train' or 'val')."""
  if split not in SPLITS:
    raise ValueError(f"Cityscapes split must be one of {SPLITS}, got "
                     f"{split!r}")
  return vps_reader.Layout(
      split=split, images_dir=f"leftImg8bit/{split}",
      all_images_dir=f"leftImg8bit_sequence/{split}",
      panoptic_json=f"gtFine/cityscapes_panoptic_{split}.json",
      panoptic_dir=f"gtFine/cityscapes_panoptic_{split}")


def parse_image_id(image_id: str, source: str) -> Tuple[str, str, int]:
  """'frankfurt_000000_000294' -> ('frankfurt', '000000', 294)."""
  m = _IMAGE_ID.match(str(image_id))
  if not m:
    raise ValueError(f"{source}: image id {image_id!r} is not "
                     "{city}_{6-digit sequence}_{6-digit frame}")
  return m.group(1), m.group(2), int(m.group(3))


def snippet_ids(image_id: str, source: str) -> Dict[int, str]:
  """Frame index 1..30 -> image id of the snippet of an annotated image
  (index 20 is the annotated image itself)."""
  city, seq, frame = parse_image_id(image_id, source)
  first = frame - (ANNOTATED_INDEX - 1)
  if first < 0:
    raise ValueError(f"{source}: image {image_id} has frame number {frame} "
                     f"< {ANNOTATED_INDEX - 1}; it cannot be frame "
                     f"{ANNOTATED_INDEX} of a {SNIPPET_LENGTH}-frame snippet")
  return {i: f"{city}_{seq}_{first + i - 1:06d}"
          for i in range(1, SNIPPET_LENGTH + 1)}


class CityscapesReader(vps_reader.VpsReader):
  """`VpsReader` of the official Cityscapes panoptic layout (see module doc).

  Construction checks that every listed image and PNG exists (and, with the
  sequence folder, every snippet frame); PNG contents, segment ids and sizes
  are checked when a frame is read.
  """

  def _read_annotations(self) -> Dict[str, Tuple[int, int, str]]:
    """Reads the panoptic JSON; returns image_id -> (h, w, image file)."""
    lay = self.layout
    path, data = self._load_coco(
        lay.panoptic_json, ("image_id", "file_name", "segments_info"))
    require = vps_reader.require_fields
    annotated = {}
    for im in data["images"]:
      iid = str(im["id"])
      parse_image_id(iid, path)
      if iid in annotated:
        raise ValueError(f"{path}: image {iid} is listed twice")
      annotated[iid] = (im["height"], im["width"], im["file_name"])
    png_dir = self._path(lay.panoptic_dir)
    for ann in data["annotations"]:
      iid = str(ann["image_id"])
      if iid not in annotated:
        raise ValueError(f"{path}: annotation for unknown image_id {iid!r}")
      if iid in self._panoptic_anns:
        raise ValueError(f"{path}: image {iid} is annotated twice")
      require(ann["segments_info"], ("id", "category_id"), path, "segment")
      for s in ann["segments_info"]:
        if s["category_id"] not in self._train_id:
          raise ValueError(f'{path}: segment {s["id"]} of {iid} has '
                           f'category_id {s["category_id"]}, not a '
                           f'{self.meta.name} category')
      png = os.path.join(png_dir, ann["file_name"])
      if not os.path.isfile(png):
        raise FileNotFoundError(f"Missing panoptic PNG: {png} (listed in "
                                f"{path})")
      self._panoptic_anns[iid] = dict(ann, png=png)
    missing = set(annotated) - set(self._panoptic_anns)
    if missing:
      raise ValueError(f"{path}: images without annotation: "
                       f"{sorted(missing)[:5]}")
    return annotated

  def _read_frames(self, annotated):
    lay = self.layout
    source = self._path(lay.panoptic_json)
    if not annotated:
      raise ValueError(f"{source} lists no images")
    images_dir = self._path(lay.images_dir)
    sequence_dir = self._path(lay.all_images_dir)
    with_sequence = os.path.isdir(sequence_dir)
    listings: Dict[str, Set[str]] = {}
    for video_id, iid in enumerate(sorted(annotated), 1):
      h, w, name = annotated[iid]
      city = parse_image_id(iid, source)[0]
      path = os.path.join(images_dir, city, os.path.basename(name))
      self._add(vps_reader.Frame(iid, video_id, ANNOTATED_INDEX, path, True,
                                 int(h), int(w)), source, listings)
      if not with_sequence:
        continue
      for index, sid in snippet_ids(iid, source).items():
        if index == ANNOTATED_INDEX or (lay.split != "train" and
                                        index != ANNOTATED_INDEX - 1):
          continue
        path = os.path.join(sequence_dir, city, sid + _IMAGE_SUFFIX)
        self._add(vps_reader.Frame(sid, video_id, index, path, False, int(h),
                                   int(w)), f"the snippet of {iid}", listings)

  def _add(self, frame: vps_reader.Frame, source: str,
           listings: Dict[str, Set[str]]):
    """Adds `frame` after checking that its file exists (one directory
    listing per folder instead of one stat per frame)."""
    if frame.image_id in self._frames:
      raise ValueError(f"{source}: image {frame.image_id} is listed twice")
    folder, base = os.path.split(frame.image_path)
    if folder not in listings:
      listings[folder] = (set(os.listdir(folder)) if os.path.isdir(folder)
                          else set())
    if base not in listings[folder]:
      raise FileNotFoundError(f"Missing image: {frame.image_path} (listed in "
                              f"{source})")
    self._frames[frame.image_id] = frame


def reader(root: str, split: str) -> CityscapesReader:
  """A validated reader of `split` under the Cityscapes folder `root`."""
  return CityscapesReader(root, layout(split), META)
