"""`vps_synthetic`: a built-in synthetic video panoptic dataset.

Driving-like 30-frame snippets (road, sidewalk, buildings, trees, sky;
persons, cars and trucks that cross and occlude each other) rendered from
rigid 2-D layers, so that every pixel's motion is known exactly.

* `render.py`: the renderer, `generate_video(SyntheticConfig(...), seed,
  split, video_index)`, the class ids and segment ids;
* `flow.py`: the exact ground-truth flow, `load_flow_fields` and
  `flow_between` (NumPy only);
* `write.py`: `write_dataset` (the Cityscapes-VPS on-disk layout) and
  `reader` (a `vps_reader.VpsReader` of a written split);
* `__main__.py`: `python -m data_pipeline.synthetic --out DIR [--videos N
  --val-videos M --height H --width W --seed S]`.

`__all__` below is re-exported here: `synthetic.write_dataset(...)` etc.
"""
from data_pipeline.synthetic.flow import flow_between
from data_pipeline.synthetic.flow import load_flow_fields
from data_pipeline.synthetic.render import BUILDING
from data_pipeline.synthetic.render import CAR
from data_pipeline.synthetic.render import generate_video
from data_pipeline.synthetic.render import IGNORE
from data_pipeline.synthetic.render import META
from data_pipeline.synthetic.render import PERSON
from data_pipeline.synthetic.render import ROAD
from data_pipeline.synthetic.render import segment_id
from data_pipeline.synthetic.render import SIDEWALK
from data_pipeline.synthetic.render import SKY
from data_pipeline.synthetic.render import SPLITS
from data_pipeline.synthetic.render import SyntheticConfig
from data_pipeline.synthetic.render import SyntheticVideo
from data_pipeline.synthetic.render import THING_CLASSES
from data_pipeline.synthetic.render import TRUCK
from data_pipeline.synthetic.render import VEGETATION
from data_pipeline.synthetic.write import image_name
from data_pipeline.synthetic.write import layout
from data_pipeline.synthetic.write import reader
from data_pipeline.synthetic.write import write_dataset
from data_pipeline.synthetic.write import write_split

__all__ = [
    "BUILDING", "CAR", "IGNORE", "META", "PERSON", "ROAD", "SIDEWALK", "SKY",
    "SPLITS", "THING_CLASSES", "TRUCK", "VEGETATION", "SyntheticConfig",
    "SyntheticVideo", "flow_between", "generate_video", "image_name", "layout",
    "load_flow_fields", "main", "reader", "segment_id", "write_dataset",
    "write_split",
]


def main(argv=None):
  """The command line of `__main__.py` (imported here only when called, so
  that `python -m data_pipeline.synthetic` runs it once)."""
  from data_pipeline.synthetic import __main__  # pylint: disable=g-import-not-at-top
  __main__.main(argv)
