"""Cityscapes-VPS in the folder its official preparation scripts leave.

  ROOT/panoptic_im_{train,val,test}_city_vps.json
  ROOT/instances_{train,val}_city_vps_rle.json   COCO instances, RLE, inst_id
  ROOT/im_all_info_{val,test}_city_vps.json      all 30 frames per snippet
  ROOT/panoptic_gt_val_city_vps.json             VPQ ground truth
  ROOT/train/img/, ROOT/train/labelmap/          annotated frames, train ids
  ROOT/val/img/, ROOT/val/img_all/, ROOT/val/panoptic_video/
  ROOT/test/img/, ROOT/test/img_all/

Train frames are the annotated ones (every 5th); val and test list all
frames, val's annotated ones carry the panoptic ground truth.
"""
from typing import Optional

from data_pipeline import metadata
from data_pipeline import vps_reader

META = metadata.CITYSCAPES_VPS
SPLITS = ("train", "val", "test")


def split_layout(split: str, instances_json: Optional[str] = None,
                 panoptic_json: Optional[str] = None,
                 all_images_json: Optional[str] = None) -> vps_reader.Layout:
  """The Cityscapes-VPS folders of `split` (VIPER's and vps_synthetic's too):
  `{split}/img`, and with each JSON file its folder: `{split}/img_all` (all
  frames), `{split}/labelmap` (instances), `{split}/panoptic_video`."""
  def folder(name, json_file):
    return f"{split}/{name}" if json_file else None
  return vps_reader.Layout(
      split=split, images_dir=f"{split}/img",
      all_images_dir=folder("img_all", all_images_json),
      all_images_json=all_images_json, instances_json=instances_json,
      labelmap_dir=folder("labelmap", instances_json),
      panoptic_json=panoptic_json,
      panoptic_dir=folder("panoptic_video", panoptic_json))


def layout(split: str) -> vps_reader.Layout:
  """The official layout of `split` ('train', 'val' or 'test')."""
  if split == "train":
    return split_layout(
        "train", instances_json="instances_train_city_vps_rle.json")
  if split == "val":
    return split_layout(
        "val", all_images_json="im_all_info_val_city_vps.json",
        panoptic_json="panoptic_gt_val_city_vps.json")
  if split == "test":
    return split_layout("test",
                        all_images_json="im_all_info_test_city_vps.json")
  raise ValueError(f"Cityscapes-VPS split must be one of {SPLITS}, got "
                   f"{split!r}")


def reader(root: str, split: str) -> vps_reader.VpsReader:
  """A validated reader of `split` under the dataset folder `root`."""
  return vps_reader.VpsReader(root, layout(split), META)
