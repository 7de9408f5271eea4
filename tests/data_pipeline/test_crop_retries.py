"""Crops that lose every instance are redrawn (transforms.train_example)."""
import numpy as np

from data_pipeline import pipeline
from data_pipeline import transforms

SIZE = (128, 256)
CROP = (32, 64)  # Output 32 x 64 (multiples of 32).
SCALE = (0.8, 1.5)
CAR = 13  # A thing train id (Cityscapes' car).


def _frame(panoptic, frame_index=20):
  rng = np.random.default_rng(frame_index)
  return {"image": rng.integers(0, 256, SIZE + (3,), dtype=np.uint8),
          "panoptic": panoptic.astype(np.int32), "video_id": 1,
          "frame_index": frame_index, "image_id": f"frame_{frame_index}"}


def _corner_frame():
  """Road everywhere (stuff, train id 0) and one car in the top-left
  corner, 20 x 40 pixels."""
  panoptic = np.zeros(SIZE, np.int32)
  panoptic[:20, :40] = CAR * 1000 + 1
  return _frame(panoptic)


def _unannotated():
  return _frame(np.full(SIZE, -1, np.int32), frame_index=19)


def _example(target, reference, seed, **kw):
  kw.setdefault("crop_retries", 10)
  rng = kw.pop("rng", None) or np.random.default_rng(seed)
  return transforms.train_example(
      target, reference, rng, crop_size=CROP, scale_range=SCALE,
      flip_probability=0.5, max_instances=4, **kw)


def _first_draws(seed, n):
  rng = np.random.default_rng(seed)
  return [transforms.sample_geometry(rng, SIZE, SCALE, CROP, 0.5, 32)
          for _ in range(n)]


def _keeps_car(geo, frame):
  return transforms.has_instance(
      transforms.warp(frame["panoptic"], geo, nearest=True, fill=-1))


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_no_retries_is_the_single_draw():
  target, reference = _corner_frame(), _unannotated()
  for seed in range(3):
    geo = _first_draws(seed, 1)[0]
    _assert_same(_example(target, reference, seed, crop_retries=0),
                 _example(target, reference, None, geometry=geo))


def test_an_empty_first_crop_is_redrawn():
  target, reference = _corner_frame(), _unannotated()
  seeds = [s for s in range(200)
           if not _example(target, reference, s,
                           crop_retries=0)["gt_valid"].any()]
  assert len(seeds) > 100  # The car is rarely in a random crop.
  redrawn = 0
  for seed in seeds[:20]:
    ex = _example(target, reference, seed)
    draws = _first_draws(seed, 11)
    kept = [i for i, g in enumerate(draws) if _keeps_car(g, target)]
    if kept:  # The first draw that keeps the car (scale, flip and crop).
      _assert_same(ex, _example(target, reference, None,
                                geometry=draws[kept[0]]))
      redrawn += 1
    assert ex["gt_valid"].sum() == 1 and ex["gt_classes"][0] == CAR
  assert redrawn > 0


def test_a_good_first_crop_is_kept():
  target, reference = _corner_frame(), _unannotated()
  seed = next(s for s in range(200) if _keeps_car(_first_draws(s, 1)[0],
                                                  target))
  _assert_same(_example(target, reference, seed),
               _example(target, reference, seed, crop_retries=0))


def test_a_frame_without_instances_takes_one_draw():
  target = _frame(np.zeros(SIZE, np.int32))  # Road only.
  for reference in (_unannotated(), target):
    rng = np.random.default_rng(5)
    ex = _example(target, reference, None, rng=rng, crop_retries=10)
    once = np.random.default_rng(5)
    geo = transforms.sample_geometry(once, SIZE, SCALE, CROP, 0.5, 32)
    assert rng.bit_generator.state == once.bit_generator.state
    _assert_same(ex, _example(target, reference, None, geometry=geo))
    assert not ex["gt_valid"].any()


def test_exhausted_retries_fall_back_to_the_whole_frame_fitted():
  target, reference = _corner_frame(), _unannotated()
  retries = 2
  seed = next(s for s in range(500) if not any(
      _keeps_car(g, target) for g in _first_draws(s, retries + 1)))
  last = _first_draws(seed, retries + 1)[-1]
  fallback = transforms.fit_geometry(SIZE, CROP, last.flip, 32)
  # 128 x 256 scaled by min(32 / 128, 64 / 256) = 1/4, uncropped.
  assert fallback == transforms.Geometry((32, 64), last.flip, (0, 0, 32, 64),
                                         (32, 64))
  ex = _example(target, reference, seed, crop_retries=retries)
  _assert_same(ex, _example(target, reference, None, geometry=fallback))
  assert ex["image"].shape == (32, 64, 3) and ex["gt_valid"].sum() == 1
  np.testing.assert_array_equal(
      ex["gt_boxes"][0], [54, 0, 64, 5] if last.flip else [0, 0, 10, 5])


def test_an_annotated_reference_must_keep_an_instance_too():
  target = _corner_frame()
  panoptic = np.zeros(SIZE, np.int32)
  panoptic[-20:, -40:] = CAR * 1000 + 2  # Opposite corner: never both.
  reference = _frame(panoptic, frame_index=25)
  rng = np.random.default_rng(0)
  geo, warped = transforms.sample_geometry_with_instances(
      rng, [target["panoptic"], reference["panoptic"]], SCALE, CROP, 0.5,
      32, crop_retries=3)
  assert geo.scaled == (32, 64) and geo.crop == (0, 0, 32, 64)
  assert all(transforms.has_instance(p) for p in warped)
  # With an unannotated reference only the target constrains the crop.
  for seed in range(5):
    alone = transforms.sample_geometry_with_instances(
        np.random.default_rng(seed), [target["panoptic"]], SCALE, CROP, 0.5,
        32, crop_retries=10)[0]
    geo, warped = transforms.sample_geometry_with_instances(
        np.random.default_rng(seed), [target["panoptic"],
                                      _unannotated()["panoptic"]],
        SCALE, CROP, 0.5, 32, crop_retries=10)
    assert geo == alone and transforms.has_instance(warped[0])


def test_train_config_default():
  assert pipeline.TrainConfig().crop_retries == 10
