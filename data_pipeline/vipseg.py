"""VIPSeg in the 720P folder its own scripts write (`change2_720p.py`,
`create_panoptic_video_labels.py`, `splitjson.py`).

  ROOT/images/<video>/<frame>.jpg              the frames (720 px high)
  ROOT/panomasksRGB/<video>/<frame>.png        RGB segment ids (R + 256 G +
                                               65536 B, 0 = void)
  ROOT/panoptic_gt_VIPSeg_{train,val}.json     {"videos": [{"video_id",
      "images": [{"id", "file_name", "height", "width"}]}], "annotations":
      [{"video_id", "annotations": [{"image_id", "file_name",
      "segments_info": [{"id", "category_id", "iscrowd", "area"}]}]}],
      "categories"}

Every listed frame is annotated; a video's frames are in the order of its
`images` list (frame_index = position + 1, video_id = position of the video
in the JSON + 1); a frame's `image_id` is `<video>/<frame id>`, which the
VIPSeg prediction writer turns back into `pan_pred/<video>/<frame>.png`.
A segment id names the same object in every frame of its video (the
converter keeps one colour per instance), so thing segments become the
tracks. 124 classes (`metadata.VIPSEG`); the JSON's categories must agree
with them, thing flags included.
"""
import os
from typing import Dict, Tuple

from data_pipeline import metadata
from data_pipeline import vps_reader

META = metadata.VIPSEG
SPLITS = ("train", "val")
IMAGE_SUFFIX = ".jpg"  # The frames of VIPSeg's 720P folder are JPEGs.


def layout(split: str) -> vps_reader.Layout:
  """The VIPSeg folders of `split` ('train' or 'val')."""
  if split not in SPLITS:
    raise ValueError(f"VIPSeg split must be one of {SPLITS}, got {split!r}")
  return vps_reader.Layout(
      split=split, images_dir="images",
      panoptic_json=f"panoptic_gt_VIPSeg_{split}.json",
      panoptic_dir="panomasksRGB")


class VipsegReader(vps_reader.VpsReader):
  """`VpsReader` of VIPSeg's video-structured panoptic JSON."""

  def _read_annotations(self) -> Dict[str, Tuple[int, int, str]]:
    lay = self.layout
    path = self._path(lay.panoptic_json)
    data = vps_reader.load_json(path, ("videos", "annotations",
                                       "categories"))
    self._check_categories(path, data["categories"])
    vps_reader.require_fields(data["videos"], ("video_id", "images"), path,
                              "video")
    vps_reader.require_fields(data["annotations"],
                              ("video_id", "annotations"), path,
                              "video annotation")
    by_video = {}
    for entry in data["annotations"]:
      vid = str(entry["video_id"])
      if vid in by_video:
        raise ValueError(f"{path}: video {vid} has two annotation entries")
      vps_reader.require_fields(entry["annotations"],
                                ("image_id", "file_name", "segments_info"),
                                path, f"annotation of video {vid}")
      by_video[vid] = {str(a["image_id"]): a for a in entry["annotations"]}
    self._positions = {}
    annotated = {}
    seen = set()
    for v, video in enumerate(data["videos"]):
      vid = str(video["video_id"])
      if vid in seen:
        raise ValueError(f"{path}: video {vid} is listed twice")
      seen.add(vid)
      if "/" in vid:
        raise ValueError(f"{path}: video id {vid!r} contains '/'")
      vps_reader.require_fields(video["images"],
                                ("id", "file_name", "height", "width"), path,
                                f"image of video {vid}")
      anns = by_video.get(vid, {})
      for f, image in enumerate(video["images"]):
        frame = str(image["id"])
        iid = f"{vid}/{frame}"
        if iid in annotated:
          raise ValueError(f"{path}: image {frame} of video {vid} is listed "
                           "twice")
        if frame not in anns:
          raise ValueError(f"{path}: image {frame} of video {vid} has no "
                           "annotation")
        ann = anns[frame]
        self._add_panoptic(
            iid, ann,
            os.path.join(self._path(lay.panoptic_dir), vid, ann["file_name"]),
            path, iid, f"segment of {iid}")
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        annotated[iid] = (image["height"], image["width"],
                          os.path.join(vid, stem + IMAGE_SUFFIX))
        self._positions[iid] = (v + 1, f + 1)
    extra = sorted(set(by_video) - seen)
    if extra:
      raise ValueError(f"{path}: annotations of videos not in 'videos': "
                       f"{extra[:5]}")
    if not annotated:
      raise ValueError(f"{path}: the split lists no frames")
    return annotated

  def _read_frames(self, annotated):
    source = self._path(self.layout.panoptic_json)
    for iid, (h, w, rel) in annotated.items():
      path = os.path.join(self._path(self.layout.images_dir), rel)
      if not os.path.isfile(path):
        raise FileNotFoundError(f"Missing image: {path} (listed in "
                                f"{source})")
      video, frame = self._positions[iid]
      self._frames[iid] = vps_reader.Frame(iid, video, frame, path, True,
                                           int(h), int(w))

  def write_panoptic_json(self, path: str) -> str:
    raise ValueError("VIPSeg has no evaluation subsets")


def reader(root: str, split: str) -> VipsegReader:
  """A validated reader of `split` under the dataset folder `root`."""
  return VipsegReader(root, layout(split), META)
