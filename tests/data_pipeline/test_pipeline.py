"""The tf.data pipelines and their NumPy transforms on synthetic data."""
import jax
import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import pipeline
from data_pipeline import synthetic
from data_pipeline import tfds_builders
from data_pipeline import transforms

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning")

CROP = (48, 80)  # Output 64 x 96 after rounding up to multiples of 32.


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  builder = tfds_builders.VpsSynthetic(
      data_dir=str(tmp_path_factory.mktemp("tfds")), config="tiny",
      file_format="array_record")
  builder.download_and_prepare()
  source, index = pipeline.open_source(builder, "train")
  return builder, source, index


@pytest.fixture(scope="module")
def videos(data):
  cfg = data[0].builder_config
  scfg = synthetic.SyntheticConfig(height=cfg.height, width=cfg.width)
  return {i + 1: synthetic.generate_video(scfg, cfg.seed, "train", i)
          for i in range(cfg.num_videos)}


def _pair(source, index, target_frame, ref_frame, video=1):
  lookup = index.lookup()
  return source[lookup[(video, target_frame)]], source[lookup[(video,
                                                               ref_frame)]]


def test_frame_index(data):
  _, source, index = data
  assert len(index.video_ids) == len(source) == 60
  assert sorted(set(index.video_ids.tolist())) == [1, 2]
  assert index.annotated.sum() == 12
  for v, records in index.videos().items():
    assert [int(index.frame_indices[r]) for r in records] == list(range(1, 31))
    assert all(int(source[r]["video_id"]) == v for r in records[:2])


def test_train_pairs(data):
  _, _, index = data
  cfg = pipeline.TrainConfig(ref_offsets=(-5, 5), seed=3)
  pairs = pipeline.train_pairs(index, cfg, epoch=0)
  assert len(pairs) == 12  # Every annotated frame has a neighbour.
  for t, r in pairs:
    assert index.annotated[t] and index.annotated[r]
    assert index.video_ids[t] == index.video_ids[r]
    assert index.frame_indices[r] - index.frame_indices[t] in (-5, 5)
  np.testing.assert_array_equal(pairs, pipeline.train_pairs(index, cfg, 0))
  assert not np.array_equal(pairs, pipeline.train_pairs(index, cfg, 1))
  free = pipeline.TrainConfig(ref_offsets=(-2, -1, 1, 2),
                              ref_requires_annotation=False)
  for _, r in pipeline.train_pairs(index, free, 0):
    assert not index.annotated[r]
  with pytest.raises(ValueError, match="No training pairs"):
    pipeline.train_pairs(index, pipeline.TrainConfig(ref_offsets=(3,)), 0)


def _check_targets(ex, prefix, with_masks):
  """Boxes are the extents of the masks, classes those of the semantic map."""
  valid = ex[prefix + "valid"]
  assert valid.sum() >= 1
  for i in np.flatnonzero(valid):
    if with_masks:
      m = ex["gt_masks"][i].astype(bool)
      ys, xs = np.nonzero(m)
      np.testing.assert_array_equal(
          ex["gt_boxes"][i], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
      assert np.all(ex["semantic"][m] == ex["gt_classes"][i])
    assert ex[prefix + "classes"][i] in synthetic.THING_CLASSES
  assert not np.any(ex[prefix + "boxes"][~valid])
  assert not np.any(ex[prefix + "track_ids"][~valid])


def test_train_example_geometry_is_consistent(data):
  _, source, index = data
  target, reference = _pair(source, index, 15, 10)
  plain = transforms.train_example(
      target, reference, None, crop_size=(64, 128), flow="ground_truth",
      geometry=transforms.identity_geometry((64, 128), 32))
  geo = transforms.Geometry(scaled=(96, 192), flip=True, crop=(20, 30, 48, 80),
                            out=(64, 96))
  ex = transforms.train_example(target, reference, None, crop_size=CROP,
                                flow="ground_truth", geometry=geo)
  for e in (plain, ex):
    _check_targets(e, "gt_", with_masks=True)
    _check_targets(e, "ref_", with_masks=False)
  assert ex["image"].shape == (64, 96, 3) and ex["gt_masks"].shape[1:] == (
      64, 96)
  # Semantic map: nearest 1.5x upscale, flip, crop of the original.
  sem, _ = transforms.decode_panoptic(np.asarray(target["panoptic"]))
  rows = ((np.arange(96) + 0.5) / 1.5).astype(int)
  cols = ((np.arange(192) + 0.5) / 1.5).astype(int)
  expected = sem[rows][:, cols][:, ::-1][20:68, 30:110]
  np.testing.assert_array_equal(ex["semantic"][:48, :80], expected)
  assert np.all(ex["semantic"][48:] == 255) and np.all(ex["semantic"][:, 80:]
                                                        == 255)
  np.testing.assert_array_equal(ex["pad_mask"], ex["semantic"] * 0 + np.pad(
      np.ones((48, 80), bool), ((0, 16), (0, 16))))
  np.testing.assert_array_equal(ex["semantic_quarter"],
                                ex["semantic"][::4, ::4])
  # Same objects keep their track ids and classes through the transform.
  kept = set(ex["gt_track_ids"][ex["gt_valid"]].tolist())
  assert kept <= set(plain["gt_track_ids"][plain["gt_valid"]].tolist())
  # Image: the normalised, resized, flipped crop (within one grey level of
  # OpenCV's bilinear resize).
  img = transforms.resize(np.asarray(target["image"]), (96, 192), False)
  np.testing.assert_allclose(
      ex["image"][:48, :80], transforms.normalize(img[:, ::-1][20:68, 30:110]),
      atol=1.01 / 57.12)
  assert np.all(ex["image"][48:] == 0)


def test_reference_index(data):
  _, source, index = data
  target, reference = _pair(source, index, 20, 25)
  ex = transforms.train_example(
      target, reference, None, crop_size=(64, 128),
      geometry=transforms.identity_geometry((64, 128), 32))
  for i in np.flatnonzero(ex["gt_valid"]):
    j = ex["gt_ref_index"][i]
    tid = ex["gt_track_ids"][i]
    ref_ids = ex["ref_track_ids"][ex["ref_valid"]].tolist()
    if tid in ref_ids:
      assert j == ref_ids.index(tid) + 1
      assert ex["ref_classes"][j - 1] == ex["gt_classes"][i]
    else:
      assert j == 0
  assert np.all(ex["gt_ref_index"][~ex["gt_valid"]] == 0)
  assert (ex["gt_ref_index"] > 0).sum() >= 1


@pytest.mark.parametrize("geo", [
    transforms.Geometry((64, 128), False, (0, 0, 64, 128), (64, 128)),
    transforms.Geometry((96, 192), True, (20, 30, 48, 80), (64, 96)),
    transforms.Geometry((51, 102), True, (3, 10, 48, 80), (64, 96)),
])
def test_ground_truth_flow_follows_the_augmentation(data, geo):
  """Reference labels warped back with the transformed flow match the
  target's, for thing pixels far better than without the flow."""
  _, source, index = data
  h, w = geo.crop[2:]
  yy, xx = np.mgrid[0:h, 0:w]
  sem_agree, hits, count, zero_hits, zero_count = [], 0, 0, 0, 0
  for video in (1, 2):
    target, reference = _pair(source, index, 10, 15, video)
    ex = transforms.train_example(target, reference, None, crop_size=CROP,
                                  flow="ground_truth", geometry=geo)
    assert np.all(ex["flow"][h:] == 0) and np.all(ex["flow"][:, w:] == 0)
    tracks = []
    for frame in (target, reference):
      sem, track = transforms.decode_panoptic(np.asarray(frame["panoptic"]))
      tracks.append((transforms.warp(sem, geo, True, 255)[:h, :w],
                     transforms.warp(track, geo, True, 0)[:h, :w]))
    (t_sem, t_track), (r_sem, r_track) = tracks
    for scale in (1.0, 0.0):
      ty = np.round(yy + scale * ex["flow"][:h, :w, 1]).astype(int)
      tx = np.round(xx + scale * ex["flow"][:h, :w, 0]).astype(int)
      inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
      ty, tx = np.clip(ty, 0, h - 1), np.clip(tx, 0, w - 1)
      things = inside & (t_track > 0)
      same = (r_track[ty, tx] == t_track)[things].sum()
      if scale:
        sem_agree.append((r_sem[ty, tx] == t_sem)[inside].mean())
        hits += same
        count += things.sum()
      else:
        zero_hits += same
        zero_count += things.sum()
  assert min(sem_agree) > 0.9
  assert count > 20
  assert hits / count > 0.85
  assert hits / count > zero_hits / zero_count + 0.3


def test_dis_flow_beats_zero_flow(data, videos):
  _, source, index = data
  target, reference = _pair(source, index, 10, 11)
  ex = transforms.train_example(
      target, reference, None, crop_size=(64, 128), flow="dis",
      geometry=transforms.identity_geometry((64, 128), 32))
  gt, visible = synthetic.flow_between(videos[1], 10, 11)
  err_dis = np.linalg.norm(ex["flow"] - gt, axis=-1)[visible].mean()
  err_zero = np.linalg.norm(gt, axis=-1)[visible].mean()
  assert ex["flow"].dtype == np.float32
  assert err_dis < err_zero


def test_too_many_instances_names_the_frame(data):
  _, source, index = data
  target, reference = _pair(source, index, 15, 10)
  with pytest.raises(ValueError, match="Frame 0001_0015_synthetic_000001_"
                     "000015 has [0-9]+ instances, more than max_instances=1"):
    transforms.train_example(target, reference, np.random.default_rng(0),
                             crop_size=(64, 128), max_instances=1,
                             scale_range=(1.0, 1.0), flip_probability=0.0)
  with pytest.raises(ValueError, match="only vps_synthetic"):
    transforms.train_example(
        {k: v for k, v in target.items() if k != "flow_layer"}, reference,
        np.random.default_rng(0), crop_size=(64, 128), flow="ground_truth")


def test_train_dataset_static_shapes_and_determinism(data):
  _, source, index = data
  cfg = pipeline.TrainConfig(crop_size=CROP, max_instances=12,
                             flow="ground_truth", per_device_batch=2, seed=7)
  ds = pipeline.train_dataset(source, index, cfg, process_index=0,
                              process_count=1, local_devices=2, num_epochs=1)
  for key, spec in ds.element_spec.items():
    assert spec.shape.is_fully_defined(), key
    assert spec.shape[:2] == (2, 2), key
  assert ds.element_spec["image"].shape == (2, 2, 64, 96, 3)
  assert ds.element_spec["gt_masks"].shape == (2, 2, 12, 64, 96)
  assert ds.element_spec["semantic_quarter"].shape == (2, 2, 16, 24)
  assert ds.element_spec["flow"].dtype == tf.float32
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == 3  # 12 pairs / 4 per batch.
  again = list(pipeline.train_dataset(
      source, index, cfg, process_index=0, process_count=1, local_devices=2,
      num_epochs=1).as_numpy_iterator())
  for a, b in zip(batches, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  b = batches[0]
  assert b["gt_valid"].any(axis=-1).all()
  np.testing.assert_array_equal(np.abs(b["frame_index"] -
                                       b["ref_frame_index"]), 5)
  # Two hosts see disjoint halves of the same epoch.
  seen = []
  for host in (0, 1):
    ds = pipeline.train_dataset(source, index, cfg, process_index=host,
                                process_count=2, local_devices=1,
                                num_epochs=1)
    seen.append({(int(v), int(f)) for x in ds.as_numpy_iterator()
                 for v, f in zip(x["video_id"].ravel(),
                                 x["frame_index"].ravel())})
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12
  # ... and their batches side by side are the one host's global batches,
  # example for example (augmentation included): host h holds slice h.
  hosts = [list(pipeline.train_dataset(
      source, index, cfg, process_index=host, process_count=2,
      local_devices=1, num_epochs=1).as_numpy_iterator()) for host in (0, 1)]
  assert len(hosts[0]) == len(hosts[1]) == len(batches)
  for step, one in enumerate(batches):
    for key in one:
      both = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      np.testing.assert_array_equal(both, one[key], err_msg=key)


def test_eval_dataset_order_and_reference(data):
  builder, _, _ = data
  source, index = pipeline.open_source(builder, "val")
  ds = pipeline.eval_dataset(source, index, flow="ground_truth",
                             process_index=0, process_count=1)
  frames = list(ds.as_numpy_iterator())
  assert [int(f["frame_index"]) for f in frames] == list(range(1, 31))
  assert [int(f["ref_frame_index"]) for f in frames] == [1] + list(range(1, 30))
  assert [bool(f["annotated"]) for f in frames] == [i % 5 == 0
                                                    for i in range(1, 31)]
  f = frames[7]
  assert f["image"].shape == (64, 128, 3) and f["flow"].shape == (64, 128, 2)
  np.testing.assert_array_equal(f["orig_size"], [64, 128])
  cfg = builder.builder_config
  video = synthetic.generate_video(
      synthetic.SyntheticConfig(height=cfg.height, width=cfg.width), cfg.seed,
      "val", 0)
  expected, _ = synthetic.flow_between(video, 8, 7)
  np.testing.assert_array_equal(f["flow"], expected)
  np.testing.assert_allclose(f["ref_image"],
                             transforms.normalize(video.frames[6]), atol=1e-5)
  assert not list(pipeline.eval_dataset(source, index, process_index=1,
                                        process_count=2).as_numpy_iterator())


def test_prefetch_to_device_shards_over_local_devices(data):
  _, source, index = data
  cfg = pipeline.TrainConfig(crop_size=CROP, max_instances=12, seed=1)
  ds = pipeline.train_dataset(source, index, cfg, num_epochs=1)
  n = jax.local_device_count()
  batches = list(pipeline.prefetch_to_device(ds, size=2))
  assert len(batches) == 12 // n
  image = batches[0]["image"]
  assert isinstance(image, jax.Array)
  assert image.shape == (n, 1, 64, 96, 3)
  assert len(image.sharding.device_set) == n


def test_eval_streams_play_videos_in_lockstep(data):
  _, source, index = data
  videos = index.videos()
  rows, valid = pipeline.eval_streams(index, 2)
  assert rows.shape == (30, 2, 2) and valid.all()
  for s, vid in enumerate(sorted(videos)):
    np.testing.assert_array_equal(rows[:, s, 0], videos[vid])
    np.testing.assert_array_equal(rows[1:, s, 1], videos[vid][:-1])
    assert rows[0, s, 1] == rows[0, s, 0]  # First frame: its own reference.
  rows, valid = pipeline.eval_streams(index, 3)
  assert valid[:, :2].all() and not valid[:, 2].any()
  rows, valid = pipeline.eval_streams(index, 1)
  assert rows.shape == (60, 1, 2) and valid.all()
  second = sorted(videos)[1]
  assert rows[30, 0, 0] == rows[30, 0, 1] == videos[second][0]
  ds = pipeline.eval_dataset(source, index, num_streams=2, process_index=0,
                             process_count=1)
  steps = list(ds.as_numpy_iterator())
  assert len(steps) == 30
  assert steps[0]["image"].shape == (2, 64, 128, 3)
  np.testing.assert_array_equal(steps[4]["frame_index"], [5, 5])
  np.testing.assert_array_equal(steps[4]["record"],
                                [videos[v][4] for v in sorted(videos)])
  assert steps[4]["valid"].all()
