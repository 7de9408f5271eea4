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
from data_pipeline import metadata
from data_pipeline import vps_reader

META = metadata.CITYSCAPES_VPS
SPLITS = ('train', 'val', 'test')


def layout(split: str) -> vps_reader.Layout:
  """The official layout of `split` ('train', 'val' or 'test')."""
  if split == 'train':
    return vps_reader.Layout(
        split='train', images_dir='train/img',
        instances_json='instances_train_city_vps_rle.json',
        labelmap_dir='train/labelmap')
  if split == 'val':
    return vps_reader.Layout(
        split='val', images_dir='val/img', all_images_dir='val/img_all',
        all_images_json='im_all_info_val_city_vps.json',
        panoptic_json='panoptic_gt_val_city_vps.json',
        panoptic_dir='val/panoptic_video')
  if split == 'test':
    return vps_reader.Layout(
        split='test', images_dir='test/img', all_images_dir='test/img_all',
        all_images_json='im_all_info_test_city_vps.json')
  raise ValueError(f'Cityscapes-VPS split must be one of {SPLITS}, got '
                   f'{split!r}')


def reader(root: str, split: str) -> vps_reader.VpsReader:
  """A validated reader of `split` under the dataset folder `root`."""
  return vps_reader.VpsReader(root, layout(split), META)
