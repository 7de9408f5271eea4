"""Panoptic fusion on hand-made masks and logits: mask removal (overlap
with better masks of the same class), the panoptic argmax, the release's
instance-vs-semantic rule, the stuff area limit, and segment ids; and the
writer's output read back by eval.vpq."""
import json

import jax
import numpy as np
from PIL import Image
import pytest

from eval import common
from eval import vpq
from vpsnet_jax.inference import panoptic
from vpsnet_jax.inference import writers
from vpsnet_jax.modeling import panoptic_head

H, W = 12, 16
STUFF = (0, 1)  # semantic channels 0, 1 are stuff
THINGS = (2, 3)  # thing class 0 -> channel 2, class 1 -> channel 3
INFER = jax.jit(panoptic_head.panoptic_inference,
                static_argnames=("stuff_channels", "thing_channels",
                                 "overlap_threshold"))


def _mask(value):
  """28x28 mask logits, constant."""
  return np.full((28, 28), value, np.float32)


def _semantic():
  """Stuff channel 0 on the left half, 1 on the right; thing channels
  below the stuff everywhere."""
  sem = np.zeros((H, W, 4), np.float32)
  sem[:, :W // 2, 0] = 2.0
  sem[:, W // 2:, 1] = 2.0
  return sem


def test_mask_removal_and_argmax():
  boxes = np.array([[2, 2, 9, 9],     # det 0, class 0
                    [3, 3, 10, 10],   # det 1, class 0: mostly covered by 0
                    [3, 3, 10, 10],   # det 2, class 1: other class, kept
                    [0, 0, 3, 3],     # det 3, class 0: empty mask
                    [12, 8, 15, 11]],  # det 4: padding
                   np.float32)
  masks = np.stack([_mask(5.0), _mask(5.0), _mask(3.0), _mask(-1.0),
                    _mask(9.0)])
  classes = np.array([0, 0, 1, 0, 0], np.int32)
  valid = np.array([True, True, True, True, False])
  pan, keep = INFER(_semantic(), masks, boxes, classes, valid,
                    stuff_channels=STUFF, thing_channels=THINGS,
                    overlap_threshold=0.3)
  pan, keep = np.asarray(pan), np.asarray(keep)
  np.testing.assert_array_equal(keep, [True, False, True, False, False])
  expected = np.where(np.arange(W)[None, :] < W // 2, 0, 1) * np.ones(
      (H, 1), int)
  expected[3:11, 3:11] = 2 + 2  # det 2 (logit 3) inside its box
  expected[2:10, 2:10] = 2 + 0  # det 0 (logit 5) wins where it is
  np.testing.assert_array_equal(pan, expected)


def test_removal_threshold_is_strict_fraction():
  # det 1 covers 8x8 = 64 px; 3 columns x 8 rows = 24 (37.5 %) overlap
  # with det 0: removed at 0.3, kept at 0.4.
  boxes = np.array([[0, 0, 7, 7], [5, 0, 12, 7]], np.float32)
  masks = np.stack([_mask(4.0), _mask(4.0)])
  args = (_semantic(), masks, boxes, np.zeros(2, np.int32), np.ones(2, bool))
  _, keep = INFER(*args, stuff_channels=STUFF, thing_channels=THINGS,
                  overlap_threshold=0.3)
  np.testing.assert_array_equal(keep, [True, False])
  _, keep = INFER(*args, stuff_channels=STUFF, thing_channels=THINGS,
                  overlap_threshold=0.4)
  np.testing.assert_array_equal(keep, [True, True])


def test_instance_logit_adds_the_semantic_logit_of_its_class():
  sem = _semantic()
  sem[4:8, 4:8, 2] = 3.0  # thing channel of class 0 fires here
  boxes = np.array([[0, 0, 15, 11]], np.float32)
  masks = _mask(-0.5)[None]  # negative mask logit: needs the semantic one
  pan, keep = INFER(sem, masks, boxes, np.zeros(1, np.int32),
                    np.ones(1, bool), stuff_channels=STUFF,
                    thing_channels=THINGS, overlap_threshold=0.3)
  assert not np.asarray(keep)[0]  # no pixel with mask logit > 0
  masks = np.full((1, 28, 28), 0.5, np.float32)
  pan, keep = INFER(sem, masks, boxes, np.zeros(1, np.int32),
                    np.ones(1, bool), stuff_channels=STUFF,
                    thing_channels=THINGS, overlap_threshold=0.3)
  pan = np.asarray(pan)
  assert np.asarray(keep)[0]
  assert (pan[4:8, 4:8] == 2).all()  # 3 + 0.5 beats the stuff logit 2
  assert (pan[:4] < 2).all()  # 0 + 0.5 does not


def test_one_compile_for_any_values():
  before = INFER._cache_size()  # pylint: disable=protected-access
  for seed in range(3):
    rng = np.random.default_rng(seed)
    INFER(rng.standard_normal((H, W, 4)).astype(np.float32),
          rng.standard_normal((3, 28, 28)).astype(np.float32),
          np.array([[0, 0, 5, 5], [2, 2, 9, 9], [1, 1, 3, 3]], np.float32),
          np.array([0, 1, 0], np.int32), rng.random(3) > 0.3,
          stuff_channels=STUFF, thing_channels=THINGS,
          overlap_threshold=0.3)
  assert INFER._cache_size() - before <= 1  # pylint: disable=protected-access


def test_resolve_majority_rule():
  pan = np.zeros((4, 8), np.int64)  # stuff channel index 0 (semantic 0)
  pan[:, 4:] = 1  # stuff channel index 1 (semantic 1)
  pan[0:2, 0:4] = 2 + 0  # det 0 (class 0 -> channel 2)
  pan[2:4, 4:8] = 2 + 1  # det 1 (class 1 -> channel 3)
  sem = np.zeros((4, 8), np.int64)
  sem[:, 4:] = 1
  sem[0:2, 0:3] = 2  # det 0: 6 of 8 pixels its own class -> kept
  sem[2:4, 4:7] = 1  # det 1: 6 of 8 stuff 1 (75 %) -> becomes stuff 1
  sem[2:4, 7] = 3
  r = panoptic.resolve(pan, sem, np.array([0, 1]), STUFF, THINGS)
  expected_inst = -np.ones((4, 8), int)
  expected_inst[0:2, 0:4] = 0
  np.testing.assert_array_equal(r.instance_map, expected_inst)
  expected_ch = np.where(np.arange(8) < 4, 0, 1)[None].repeat(4, 0)
  expected_ch[0:2, 0:4] = 2
  np.testing.assert_array_equal(r.channels, expected_ch)
  # Below half (3 of 8 pixels stuff): the instance stays.
  sem[2:4, 4:7] = 3
  sem[2, 4:7] = 1
  r = panoptic.resolve(pan, sem, np.array([0, 1]), STUFF, THINGS)
  assert (r.instance_map[2:4, 4:8] == 1).all()
  # The rule can be switched off.
  sem[2:4, 4:8] = 1
  r = panoptic.resolve(pan, sem, np.array([0, 1]), STUFF, THINGS,
                       majority_check=False)
  assert (r.instance_map[2:4, 4:8] == 1).all()


def test_segments_ids_area_limit_and_table():
  pan = np.zeros((4, 8), np.int64)
  pan[:, 6:] = 1  # stuff channel 1: 8 px
  pan[0:2, 0:2] = 2 + 0
  pan[2:4, 2:4] = 2 + 1
  sem = np.where(pan >= 2, 2, np.where(pan == 1, 1, 0))
  r = panoptic.resolve(pan, sem, np.array([0, 0]), STUFF, THINGS)
  categories = [7, 8, 24, 26]  # dataset category ids of channels 0..3
  ids, table = panoptic.segments(r, np.array([5, 9]), categories, THINGS,
                                 stuff_area_limit=10)
  d = panoptic.SEGMENT_DIVISOR
  expected = np.full((4, 8), 8 * d)  # stuff channel 0 (category 7): 16 px
  expected[:, 6:] = 0  # stuff 1 has 8 < 10 px: void
  expected[0:2, 0:2] = 25 * d + 5
  expected[2:4, 2:4] = 25 * d + 9
  np.testing.assert_array_equal(ids, expected)
  assert table == [
      {"id": 8 * d, "category_id": 7, "isthing": False, "track_id": 0,
       "area": 16},
      {"id": 25 * d + 5, "category_id": 24, "isthing": True, "track_id": 5,
       "area": 4},
      {"id": 25 * d + 9, "category_id": 24, "isthing": True, "track_id": 9,
       "area": 4}]
  with pytest.raises(ValueError, match="track id 0"):
    panoptic.segments(r, np.array([5, 0]), categories, THINGS)


def test_writer_output_read_back_by_vpq(tmp_path):
  """A prediction written with the writer, equal to the ground truth up to
  its ids, scores 100 everywhere; a missing thing costs its share."""
  d = panoptic.SEGMENT_DIVISOR
  categories = [{"id": 0, "name": "road", "isthing": 0},
                {"id": 1, "name": "car", "isthing": 1}]
  gt_dir = tmp_path / "gt"
  gt_dir.mkdir()
  gt_anns, frames = [], []
  for f in range(1, 4):
    ids = np.full((H, W), 1000, np.int64)
    ids[2:6, f:f + 4] = 2001
    name = f"0001_{f:04d}_x"
    Image.fromarray(common.ids_to_rgb(ids)).save(gt_dir / f"{name}.png")
    gt_anns.append({"image_id": name, "file_name": f"{name}.png",
                    "segments_info": [{"id": 1000, "category_id": 0},
                                      {"id": 2001, "category_id": 1}]})
    frames.append((name, ids))
  gt_json = tmp_path / "gt.json"
  gt_json.write_text(json.dumps({"annotations": gt_anns,
                                 "categories": categories}))
  w = writers.PredictionWriter(str(tmp_path / "pred"))
  for name, ids in frames:
    pred = np.where(ids == 1000, 1 * d, 2 * d + 7)
    w.write(name, pred, [{"id": d, "category_id": 0},
                         {"id": 2 * d + 7, "category_id": 1}])
  w.close()
  result = vpq.evaluate_folder(str(gt_json), str(gt_dir),
                               str(tmp_path / "pred"), ks=(0, 1), stride=1)
  assert result["vpq"]["all"] == pytest.approx(100.0)
  got = writers.read_prediction(str(tmp_path / "pred"), frames[1][0])
  np.testing.assert_array_equal(got, np.where(frames[1][1] == 1000, d,
                                              2 * d + 7))
