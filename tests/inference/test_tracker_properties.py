"""Property tests (hypothesis) of every tracker `tracker.create` builds.

Random videos of up to 8 frames (24x32 maps) of up to 6 objects that appear,
vanish and come back, some static and some moving, are fed as read-only
arrays, as Python lists and as read-only NumPy views of JAX arrays (what
online inference passes). Issue 19: the track head kept a view of the
caller's read-only embeddings when a video's first frame had one detection
and crashed (`assignment destination is read-only`) on the next match.

A detection owns the still free pixels of its box in the instance map
(higher probability first, as the panoptic fusion); one whose box is
already covered is left out of the frame (occluded), so every detection
owns a non-empty region. Object o's embedding is s * e_o (one axis per
object, s = 5 while static, random in [3, 6] while moving): objects never
look alike, which is what makes the stability properties below hold.
"""
import dataclasses

import hypothesis
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from configs import synthetic
from vpsnet_jax.inference import tracker as tracker_lib

H, W = 24, 32
E = 8
MAX_OBJECTS = 6
NUM_CLASSES = 3
HIGH_SCORE = 0.9
FIELDS = ("boxes", "scores", "classes", "embeddings", "instance_map", "flow")
# "track_head_mask": the track head with the mask IoU cue on.
NAMES = ("track_head", "track_head_mask", "cls_sort", "iou_match", "none")
# How the caller hands the arrays over ("writable": plain NumPy arrays, the
# only kind a caller can change in place after `assign`).
KINDS = ("readonly", "list", "jax")

SETTINGS = hypothesis.settings(
    max_examples=40, deadline=None, database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _config(name):
  config = synthetic.get_config()
  config.tracker = "track_head" if name == "track_head_mask" else name
  if name == "track_head_mask":
    config.tracking.mask_iou_weight = 1.0
  return config


CONFIGS = {name: _config(name) for name in NAMES}


def _create(name):
  return tracker_lib.create(CONFIGS[name])


@st.composite
def videos(draw, max_frames=8):
  """Frames: dicts of the `Detections` fields (NumPy) and `objects`, the
  object behind each detection."""
  num_frames = draw(st.integers(1, max_frames))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  objects = []
  for _ in range(draw(st.integers(0, MAX_OBJECTS))):
    x1, y1 = draw(st.integers(0, W - 2)), draw(st.integers(0, H - 2))
    high = draw(st.booleans())
    objects.append({
        "cls": draw(st.integers(0, NUM_CLASSES - 1)),
        "box": np.array([x1, y1, draw(st.integers(x1 + 1, W - 1)),
                         draw(st.integers(y1 + 1, H - 1))], np.float64),
        "moving": draw(st.booleans()), "high": high,
        "score": rng.uniform(HIGH_SCORE if high else 0.05, 1.0),
        "visible": draw(st.integers(0, 2**num_frames - 1))})  # Bit t: frame t
  flows = rng.choice(["none", "zero", "shift", "noise"], num_frames)
  frames = []
  for t in range(num_frames):
    rows = []
    for o, obj in enumerate(objects):
      if obj["moving"]:
        step = rng.integers(-2, 3, 2).astype(np.float64)
        lo = np.maximum(-obj["box"][:2], -2.0)
        hi = np.minimum([W - 1, H - 1] - obj["box"][2:], 2.0)
        obj["box"] = obj["box"] + np.tile(np.clip(step, lo, hi), 2)
      if not obj["visible"] >> t & 1:
        continue
      scale, score = 5.0, obj["score"]
      if obj["moving"]:
        scale = rng.uniform(3.0, 6.0)
        score = rng.uniform(HIGH_SCORE if obj["high"] else 0.05, 1.0)
      rows.append((score, o, obj["box"].copy(), scale))
    rows.sort(key=lambda row: -row[0])  # Decreasing probability.
    instance_map = -np.ones((H, W), np.int64)
    kept = []
    for score, o, box, scale in rows:
      x1, y1, x2, y2 = box.astype(int)
      region = instance_map[y1:y2 + 1, x1:x2 + 1]
      if (region < 0).any():
        region[region < 0] = len(kept)
        kept.append((score, o, box, scale))
    n = len(kept)
    embeddings = np.zeros((n, E))
    for k, (_, o, _, scale) in enumerate(kept):
      embeddings[k, o] = scale
    flow = None
    if flows[t] == "zero":
      flow = np.zeros((H, W, 2))
    elif flows[t] == "shift":  # Whole pixels, maybe (0, 0).
      flow = np.broadcast_to(rng.integers(-1, 2, 2), (H, W, 2))
    elif flows[t] == "noise":
      flow = rng.uniform(-1.5, 1.5, (H, W, 2))
    frames.append({
        "boxes": np.array([row[2] for row in kept]).reshape(n, 4),
        "scores": np.array([row[0] for row in kept], np.float64),
        "classes": np.array([objects[row[1]]["cls"] for row in kept],
                            np.int64),
        "embeddings": embeddings, "instance_map": instance_map,
        "flow": None if flow is None else flow.astype(np.float32),
        "objects": np.array([row[1] for row in kept], np.int64)})
  return frames


def _feed(array, kind):
  """`array` as a caller of kind `kind` would pass it."""
  if array is None:
    return None
  if kind == "list":
    return array.tolist()
  if kind == "jax":
    return np.asarray(jnp.asarray(array))  # Read-only view.
  out = np.array(array)
  if kind == "readonly":
    out.setflags(write=False)
  return out


def _detections(frame, kind):
  return tracker_lib.Detections(*(_feed(frame[f], kind) for f in FIELDS))


def _run(tracker, frames, kind):
  return [tracker.assign(_detections(frame, kind)) for frame in frames]


def _check_ids(name, frame, ids):
  """Ids are ints >= 1; unique within the frame, except for Cls-Sort whose
  id is the rank within the class: its ids of a class are 1..count, unique
  within (frame, class), and repeat across classes."""
  n = len(frame["scores"])
  assert isinstance(ids, np.ndarray) and ids.shape == (n,)
  assert np.issubdtype(ids.dtype, np.integer)
  assert (ids >= 1).all()
  if name == "cls_sort":
    for c in np.unique(frame["classes"]):
      members = ids[frame["classes"] == c]
      assert sorted(members.tolist()) == list(range(1, len(members) + 1))
  else:
    assert len(set(ids.tolist())) == n


def _stable_pairs(name, frames):
  """(t, i, j): detection i of frame t and j of frame t + 1 are one object
  that must keep its id.

  track_head: same box, embedding and class, probability >= 0.9 in frame
  t + 1 (the object's own column then beats any other detection's by at
  least log 2 + log 0.9 > 0); with the mask cue (up to 1 more for another
  detection) also no other detection of its class overlapping its box.
  iou_match: same class and exactly the same pixels, no flow (mask IoU 1).
  cls_sort: the only detection of its class in both frames (rank 1).
  """
  for t in range(len(frames) - 1):
    a, b = frames[t], frames[t + 1]
    for j, o in enumerate(b["objects"]):
      hits = np.flatnonzero(a["objects"] == o)
      if not len(hits):
        continue
      i = hits[0]
      c = b["classes"][j]
      if a["classes"][i] != c:
        continue
      if name.startswith("track_head"):
        keep = (np.array_equal(a["boxes"][i], b["boxes"][j]) and
                np.array_equal(a["embeddings"][i], b["embeddings"][j]) and
                b["scores"][j] >= HIGH_SCORE)
        if name == "track_head_mask":
          iou = tracker_lib.box_iou(b["boxes"][j], b["boxes"])[0]
          others = (b["classes"] == c) & (np.arange(len(iou)) != j)
          keep &= not (others & (iou > 0)).any()
      elif name == "iou_match":
        keep = (np.array_equal(a["instance_map"] == i, b["instance_map"] == j)
                and (b["flow"] is None or not b["flow"].any()))
      elif name == "cls_sort":
        keep = (a["classes"] == c).sum() == 1 and (b["classes"] == c).sum() == 1
      else:
        keep = False
      if keep:
        yield t, i, j


def _state_arrays(value):
  """Every NumPy array a tracker holds (attributes, tuples, dicts)."""
  if isinstance(value, np.ndarray):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _state_arrays(v)
  elif isinstance(value, dict):
    for v in value.values():
      yield from _state_arrays(v)
  elif hasattr(value, "__dict__"):
    for v in vars(value).values():
      yield from _state_arrays(v)


def _scramble(array):
  """Overwrites a caller's array in place with different values."""
  if np.issubdtype(array.dtype, np.floating):
    array[...] = 1.0 - 3.0 * array
  else:
    array[...] = -1 - array


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@hypothesis.given(video=videos())
def test_track_ids(name, kind, video):
  """One run, every property of the ids: ints >= 1 and unique within the
  frame (`_check_ids`); an object that stays identical keeps its id
  (`_stable_pairs`; not for `none`); `none` gives fresh ids in every frame
  (1, 2, ... over the whole video)."""
  ids = _run(_create(name), video, kind)
  for frame, frame_ids in zip(video, ids):
    _check_ids(name, frame, frame_ids)
  for t, i, j in _stable_pairs(name, video):
    assert ids[t][i] == ids[t + 1][j], ("lost the id", t, i, j, ids)
  if name == "none":
    every = np.concatenate(ids)
    np.testing.assert_array_equal(every, np.arange(1, len(every) + 1))


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@hypothesis.given(first=videos(max_frames=4), kind=st.sampled_from(KINDS))
def test_reset_starts_a_new_video(name, first, kind):
  """After a video and `reset()`, the next video (the first one backwards)
  gets the ids a new tracker gives it, from 1 on. (The input kind is drawn,
  not a parameter: it is not what this is about.)"""
  second = first[::-1]
  tracker = _create(name)
  _run(tracker, first, kind)
  tracker.reset()
  after = _run(tracker, second, kind)
  for got, want in zip(after, _run(_create(name), second, kind)):
    np.testing.assert_array_equal(got, want)
  shown = next((ids for ids in after if len(ids)), None)
  if shown is not None and name != "cls_sort":  # (Ranks: _check_ids.)
    np.testing.assert_array_equal(shown, np.arange(1, len(shown) + 1))


@pytest.mark.parametrize("kind", ("writable", "readonly", "jax"))
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@hypothesis.given(video=videos())
def test_trackers_never_alias_the_callers_arrays(name, kind, video):
  """Changing the caller's arrays after `assign` changes nothing later on
  (same ids as a run on fresh copies), `assign` does not write to them, and
  no array the tracker keeps shares memory with them. (Python lists are
  left out: nothing of theirs can be aliased.)"""
  expected = _run(_create(name), video, kind)
  tracker = _create(name)
  for frame, want in zip(video, expected):
    det = _detections(frame, kind)
    arrays = [getattr(det, f.name) for f in dataclasses.fields(det)]
    arrays = [a for a in arrays if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    np.testing.assert_array_equal(tracker.assign(det), want)
    for a, b in zip(arrays, before):
      np.testing.assert_array_equal(a, b)
    for state in _state_arrays(tracker):
      for a in arrays:
        assert not np.shares_memory(state, a)
    for a in arrays:
      if a.flags.writeable:
        _scramble(a)


def test_issue_19_one_first_detection_with_read_only_jax_embeddings():
  """The reported crash: first frame one detection, embeddings a read-only
  view of a JAX array, the next frame matches it."""
  tracker = _create("track_head")

  def frame():
    return tracker_lib.Detections(
        np.asarray(jnp.asarray([[2.0, 3.0, 12.0, 10.0]])),
        np.asarray(jnp.asarray([0.95])), np.asarray(jnp.asarray([1])),
        np.asarray(jnp.asarray(np.eye(1, E) * 5.0)))

  assert not frame().embeddings.flags.writeable
  np.testing.assert_array_equal(tracker.assign(frame()), [1])
  np.testing.assert_array_equal(tracker.assign(frame()), [1])
  np.testing.assert_array_equal(tracker.assign(frame()), [1])


def test_issue_19_five_line_reproduction():
  a = np.ones((1, 8))
  a.setflags(write=False)
  tracker = tracker_lib.TrackHeadTracker()
  det = tracker_lib.Detections(np.array([[0.0, 0, 9, 9]]), np.array([0.9]),
                               np.array([0]), a)
  np.testing.assert_array_equal(tracker.assign(det), [1])
  np.testing.assert_array_equal(tracker.assign(det), [1])


@pytest.mark.parametrize("kind", KINDS + ("writable",))
def test_owned_copies_and_normalises(kind):
  frame = {"boxes": np.array([[0, 1, 4, 5], [2, 2, 9, 7]], np.float32),
           "scores": np.array([0.9, 0.4], np.float32),
           "classes": np.array([2, 0], np.int32),
           "embeddings": np.arange(6, dtype=np.float32).reshape(2, 3),
           "instance_map": np.array([[0, -1], [1, 1]], np.int32),
           "flow": np.ones((2, 2, 2))}
  det = _detections(frame, kind)
  got = det.owned()
  dtypes = {"boxes": np.float64, "scores": np.float64, "classes": np.int64,
            "embeddings": np.float64, "instance_map": np.int64,
            "flow": np.float32}
  for name, dtype in dtypes.items():
    value = getattr(got, name)
    assert value.dtype == dtype and value.flags.writeable, name
    assert value.shape == frame[name].shape, name
    np.testing.assert_array_equal(value, frame[name])
    given_value = getattr(det, name)
    if isinstance(given_value, np.ndarray):
      assert not np.shares_memory(value, given_value), name


def test_owned_accepts_empty_lists_and_no_embeddings():
  got = tracker_lib.Detections([], [], [], []).owned()
  assert got.boxes.shape == (0, 4) and got.scores.shape == (0,)
  assert got.classes.shape == (0,) and got.embeddings.shape == (0, 0)
  assert got.instance_map is None and got.flow is None
  got = tracker_lib.Detections([[0, 0, 1, 1]], [0.5], [2], [[]]).owned()
  assert got.embeddings.shape == (1, 0) and got.classes.dtype == np.int64
  for t in (_create(name) for name in NAMES):
    ids = t.assign(tracker_lib.Detections(
        [], [], [], [], instance_map=(-np.ones((2, 3), np.int64)).tolist()))
    assert ids.shape == (0,)


def _fields(**more):
  """`Detections` fields of two detections."""
  return {"boxes": np.zeros((2, 4)), "scores": np.ones(2),
          "classes": np.zeros(2, np.int64), "embeddings": np.zeros((2, E)),
          **more}


@pytest.mark.parametrize("field", ("boxes", "classes", "embeddings"))
def test_owned_names_the_field_of_another_length(field):
  fields = _fields()
  fields[field] = fields[field][:1]
  with pytest.raises(ValueError, match=field):
    tracker_lib.Detections(**fields).owned()


@pytest.mark.parametrize("field,value", [
    ("boxes", np.zeros((2, 3))), ("scores", np.ones((2, 1))),
    ("embeddings", np.zeros(2)), ("instance_map", np.zeros(4, np.int64)),
    ("flow", np.zeros((2, 2, 3)))])
def test_owned_names_the_field_of_a_wrong_shape(field, value):
  fields = _fields(instance_map=np.zeros((2, 2), np.int64))
  fields[field] = value
  with pytest.raises(ValueError, match=field):
    tracker_lib.Detections(**fields).owned()
