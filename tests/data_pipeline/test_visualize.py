"""Colours stable per (class, id) and the GIF writer."""
import numpy as np
from PIL import Image
import pytest

from data_pipeline import metadata
from data_pipeline import visualize

META = metadata.SYNTHETIC


def test_colors_are_stable_per_class_and_id():
  a = np.array([[-1, 0, 6001], [6002, 5001, 6001]])
  b = np.array([[6001, 6001, 4000], [6002, 0, -1]])  # Later frame, moved.
  ca, cb = visualize.colorize(a, META), visualize.colorize(b, META)
  np.testing.assert_array_equal(ca[0, 2], cb[0, 0])  # car 1 in both frames
  np.testing.assert_array_equal(ca[1, 0], cb[1, 0])  # car 2
  assert not np.array_equal(ca[0, 2], ca[1, 0])  # different cars differ
  assert not np.array_equal(ca[0, 2], ca[1, 1])  # person 1 != car 1
  np.testing.assert_array_equal(ca[0, 1], META.categories[0].color)  # road
  np.testing.assert_array_equal(cb[0, 2], META.categories[4].color)  # sky
  np.testing.assert_array_equal(ca[0, 0], [0, 0, 0])  # void
  image = np.full((2, 3, 3), 100, np.uint8)
  blended = visualize.colorize(a, META, image=image, alpha=0.5)
  np.testing.assert_array_equal(
      blended[0, 1], np.round(0.5 * np.array(META.categories[0].color) + 50))
  with pytest.raises(ValueError, match="train id 9"):
    visualize.colorize(np.array([[9000]]), META)


def test_write_gif(tmp_path):
  frames = [np.full((4, 5, 3), v, np.uint8) for v in (0, 120, 255)]
  path = str(tmp_path / "video.gif")
  visualize.write_gif(frames, path, fps=10)
  with Image.open(path) as gif:
    assert gif.n_frames == 3 and gif.size == (5, 4)
    gif.seek(1)
    assert np.asarray(gif.convert("RGB"))[0, 0].tolist() == [120, 120, 120]
  with pytest.raises(ValueError, match="No frames"):
    visualize.write_gif([], path)
