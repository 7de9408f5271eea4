"""Trackers on hand-made detections: crossing look-alikes, an object that
leaves and comes back, two detections claiming one object, and the
baselines (Cls-Sort, IoU-Match, new ids)."""
import numpy as np
import pytest

from vpsnet_jax.inference import tracker as tracker_lib

E = 8


def _emb(*hot):
  """Unit embeddings along the given axes, scaled (dot-product affinity)."""
  out = np.zeros((len(hot), E))
  for i, h in enumerate(hot):
    out[i, h] = 5.0
  return out


def _det(boxes, classes, embeddings, scores=None, instance_map=None,
         flow=None):
  boxes = np.asarray(boxes, np.float64)
  return tracker_lib.Detections(
      boxes, np.full(len(boxes), 0.9) if scores is None else
      np.asarray(scores, np.float64), np.asarray(classes, np.int64),
      np.asarray(embeddings, np.float64), instance_map, flow)


def test_box_iou_and_label_iou():
  a = np.array([[0, 0, 9, 9]])
  b = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 29, 29]])
  np.testing.assert_allclose(tracker_lib.box_iou(a, b)[0],
                             [1.0, 50 / 150, 0.0])
  cur = np.array([[0, 0, 1, -1], [1, 1, -1, -1]])
  prev = np.array([[0, -1, 1, 1], [1, 1, -1, -1]])
  iou = tracker_lib.label_iou(cur, 2, prev, 2)
  # seg 0: {(0,0),(0,1)} vs prev 0: {(0,0)} -> 1/2; cur 1 vs prev 1:
  # {(0,2),(1,0),(1,1)} vs {(0,2),(0,3),(1,0),(1,1)} -> 3/4.
  np.testing.assert_allclose(iou, [[0.5, 0.0], [0.0, 0.75]])


def test_warp_labels_follows_the_flow():
  labels = -np.ones((4, 6), np.int64)
  labels[1, 1] = 3
  flow = np.zeros((4, 6, 2), np.float32)
  flow[..., 0] = -2  # this(x) = previous(x - 2): content moved right by 2.
  out = tracker_lib.warp_labels(labels, flow)
  assert out[1, 3] == 3 and (out == 3).sum() == 1
  assert (out[:, :2] == -1).all()  # Outside the previous frame.


def test_track_head_keeps_ids_of_crossing_look_alikes():
  """Two cars of one class swap sides; their embeddings tell them apart,
  although box IoU alone would swap them at the crossing."""
  t = tracker_lib.TrackHeadTracker()
  left, right = [0, 0, 9, 9], [20, 0, 29, 9]
  mid_a, mid_b = [9, 0, 18, 9], [11, 0, 20, 9]
  ids0 = t.assign(_det([left, right], [1, 1], _emb(0, 1)))
  np.testing.assert_array_equal(ids0, [1, 2])
  ids1 = t.assign(_det([mid_b, mid_a], [1, 1], _emb(1, 0)))
  np.testing.assert_array_equal(ids1, [2, 1])
  ids2 = t.assign(_det([left, right], [1, 1], _emb(1, 0)))
  np.testing.assert_array_equal(ids2, [2, 1])  # Now on the other sides.


def test_track_head_remembers_an_object_that_leaves_and_comes_back():
  t = tracker_lib.TrackHeadTracker()
  t.assign(_det([[0, 0, 9, 9], [30, 0, 39, 9]], [0, 2], _emb(0, 1)))
  ids = t.assign(_det([[30, 0, 39, 9]], [2], _emb(1)))  # Object 1 left.
  np.testing.assert_array_equal(ids, [2])
  ids = t.assign(_det([[30, 0, 39, 9], [2, 0, 11, 9]], [2, 0], _emb(1, 0)))
  np.testing.assert_array_equal(ids, [2, 1])  # Back with its old id.
  ids = t.assign(_det([[50, 0, 59, 9]], [1], _emb(5)))  # A new object.
  np.testing.assert_array_equal(ids, [3])
  assert len(t.classes) == 3


def test_two_detections_claiming_one_object():
  t = tracker_lib.TrackHeadTracker()
  t.assign(_det([[0, 0, 9, 9]], [1], _emb(0)))
  # Both look like object 1; the second overlaps it more and wins; the
  # first becomes a new object.
  ids = t.assign(_det([[4, 0, 13, 9], [1, 0, 10, 9]], [1, 1], _emb(0, 0),
                      scores=[0.95, 0.9]))
  np.testing.assert_array_equal(ids, [2, 1])
  np.testing.assert_array_equal(t.boxes[0], [1, 0, 10, 9])  # Updated.


def test_match_score_terms():
  t = tracker_lib.TrackHeadTracker(affinity_weight=1.0, score_weight=1.0,
                                   iou_weight=2.0, class_weight=10.0)
  t.assign(_det([[0, 0, 9, 9], [20, 0, 29, 9]], [0, 1], _emb(0, 1)))
  det = _det([[0, 0, 9, 9]], [0], _emb(0), scores=[0.5])
  total = t.scores(det)
  aff = np.array([0.0, 25.0, 0.0])
  logsm = aff - np.log(np.exp(aff).sum())
  expected = logsm + np.log(0.5) + 2.0 * np.array([0, 1, 0]) + 10.0 * (
      np.array([1, 1, 0]))
  np.testing.assert_allclose(total[0], expected, rtol=1e-9)
  # The stored release file's scoring: no affinity term.
  r = tracker_lib.TrackHeadTracker(affinity_weight=0.0)
  r.assign(_det([[0, 0, 9, 9], [20, 0, 29, 9]], [0, 1], _emb(0, 1)))
  np.testing.assert_allclose(r.scores(det)[0], expected - logsm, rtol=1e-9)


def test_mask_iou_cue_uses_the_warped_previous_masks():
  t = tracker_lib.TrackHeadTracker(affinity_weight=0.0, iou_weight=0.0,
                                   class_weight=0.0, mask_iou_weight=5.0)
  m0 = -np.ones((4, 8), np.int64)
  m0[:, 0:2] = 0
  m0[:, 4:6] = 1
  np.testing.assert_array_equal(
      t.assign(_det([[0, 0, 1, 3], [4, 0, 5, 3]], [0, 0], np.zeros((2, 0)),
                    instance_map=m0)), [1, 2])
  # Both moved right by 2; the detections come in the other order.
  m1 = -np.ones((4, 8), np.int64)
  m1[:, 6:8] = 0
  m1[:, 2:4] = 1
  flow = np.zeros((4, 8, 2), np.float32)
  flow[..., 0] = -2
  det = _det([[6, 0, 7, 3], [2, 0, 3, 3]], [0, 0], np.zeros((2, 0)),
             instance_map=m1, flow=flow)
  np.testing.assert_array_equal(t.assign(det), [2, 1])


def test_cls_sort_ranks_within_class():
  t = tracker_lib.ClsSortTracker()
  det = _det(np.zeros((4, 4)), [1, 0, 1, 1], np.zeros((4, 0)),
             scores=[0.7, 0.9, 0.95, 0.8])
  np.testing.assert_array_equal(t.assign(det), [3, 1, 1, 2])


def test_iou_match_follows_flow_and_class():
  t = tracker_lib.IoUMatchTracker(threshold=0.5)
  m0 = -np.ones((6, 10), np.int64)
  m0[1:4, 0:3] = 0  # class 0
  m0[1:4, 5:8] = 1  # class 1
  ids0 = t.assign(_det(np.zeros((2, 4)), [0, 1], np.zeros((2, 0)),
                       instance_map=m0))
  np.testing.assert_array_equal(ids0, [1, 2])
  m1 = -np.ones((6, 10), np.int64)
  m1[1:4, 2:5] = 1  # the class-0 object moved right by 2: now detection 1
  m1[1:4, 7:10] = 0  # the class-1 object moved right by 2: detection 0
  flow = np.zeros((6, 10, 2), np.float32)
  flow[..., 0] = -2
  ids1 = t.assign(_det(np.zeros((2, 4)), [1, 0], np.zeros((2, 0)),
                       instance_map=m1, flow=flow))
  np.testing.assert_array_equal(ids1, [2, 1])
  # Without the flow the overlap is 1/5 < 0.5: new ids.
  t2 = tracker_lib.IoUMatchTracker(threshold=0.5)
  t2.assign(_det(np.zeros((2, 4)), [0, 1], np.zeros((2, 0)),
                 instance_map=m0))
  np.testing.assert_array_equal(
      t2.assign(_det(np.zeros((2, 4)), [1, 0], np.zeros((2, 0)),
                     instance_map=m1)), [3, 4])


def test_iou_match_one_previous_mask_goes_to_the_best_overlap():
  t = tracker_lib.IoUMatchTracker(threshold=0.3)
  m0 = -np.ones((4, 10), np.int64)
  m0[:, 0:6] = 0
  t.assign(_det(np.zeros((1, 4)), [0], np.zeros((1, 0)), instance_map=m0))
  m1 = -np.ones((4, 10), np.int64)
  m1[:, 0:2] = 0  # IoU 2/6
  m1[:, 2:6] = 1  # IoU 4/6: keeps the id
  ids = t.assign(_det(np.zeros((2, 4)), [0, 0], np.zeros((2, 0)),
                      instance_map=m1))
  np.testing.assert_array_equal(ids, [2, 1])


def test_new_ids_and_reset():
  t = tracker_lib.NewIdTracker()
  np.testing.assert_array_equal(t.assign(_det(np.zeros((2, 4)), [0, 0],
                                               np.zeros((2, 0)))), [1, 2])
  np.testing.assert_array_equal(t.assign(_det(np.zeros((1, 4)), [0],
                                               np.zeros((1, 0)))), [3])
  t.reset()
  np.testing.assert_array_equal(t.assign(_det(np.zeros((1, 4)), [0],
                                               np.zeros((1, 0)))), [1])


@pytest.mark.parametrize("name,cls", [
    ("track_head", tracker_lib.TrackHeadTracker),
    ("cls_sort", tracker_lib.ClsSortTracker),
    ("iou_match", tracker_lib.IoUMatchTracker),
    ("none", tracker_lib.NewIdTracker)])
def test_create_from_config(name, cls):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.tracker = name
  assert isinstance(tracker_lib.create(c), cls)


def test_empty_frames():
  for t in (tracker_lib.TrackHeadTracker(), tracker_lib.ClsSortTracker(),
            tracker_lib.NewIdTracker()):
    ids = t.assign(_det(np.zeros((0, 4)), [], np.zeros((0, E))))
    assert ids.shape == (0,)
  t = tracker_lib.IoUMatchTracker()
  ids = t.assign(_det(np.zeros((0, 4)), [], np.zeros((0, 0)),
                      instance_map=-np.ones((3, 3), np.int64)))
  assert ids.shape == (0,)
