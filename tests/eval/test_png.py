"""The evaluators' PNG decoder: PIL's pixels, and an error for every PNG
that is not 8-bit RGB (a palette would otherwise be silently expanded)."""

import numpy as np
from PIL import Image
import pytest

from eval import common


def test_pixels_equal_pil(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
  x[:20] = x[0, 0]  # runs as well as noise
  Image.fromarray(x).save(tmp_path / "a.png")
  got = common.read_rgb_png(str(tmp_path / "a.png"), "ids")
  assert got.dtype == np.uint8 and got.shape == (37, 53, 3)
  np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path /
                                                           "a.png")))


@pytest.mark.parametrize("image,kind", [
    (Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert("P"), "palette"),
    (Image.fromarray(np.zeros((4, 4), np.uint8)), "greyscale"),
    (Image.fromarray(np.zeros((4, 4, 4), np.uint8)), "RGBA"),
])
def test_non_rgb_pngs_are_errors(tmp_path, image, kind):
  image.save(tmp_path / "b.png")
  with pytest.raises(common.VPQInputError,
                     match=f"b.png: expected an RGB PNG \\(ids\\).*got {kind}"):
    common.read_rgb_png(str(tmp_path / "b.png"), "ids")


def test_corrupt_and_truncated_pngs_are_errors(tmp_path):
  Image.fromarray(np.arange(300, dtype=np.uint8).reshape(10, 10, 3)).save(
      tmp_path / "c.png")
  data = (tmp_path / "c.png").read_bytes()
  (tmp_path / "c.png").write_bytes(data[:len(data) // 2])
  with pytest.raises(common.VPQInputError, match="c.png: unreadable PNG"):
    common.read_rgb_png(str(tmp_path / "c.png"), "ids")
  (tmp_path / "d.png").write_bytes(b"GIF89a" + bytes(40))
  with pytest.raises(common.VPQInputError, match="d.png: unreadable PNG"):
    common.read_rgb_png(str(tmp_path / "d.png"), "ids")
