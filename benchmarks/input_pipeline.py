"""Input pipeline throughput: training examples per second on this machine.

Builds small vps_synthetic datasets (one training video each) at the
synthetic size and at the Cityscapes size, then times
`pipeline.train_dataset` with and without OpenCV DIS flow:

  python benchmarks/input_pipeline.py [--data_dir DIR] [--examples 20]

Prints a table: frame size, crop, flow, examples per second.
"""
import argparse
import os
import tempfile
import time

from data_pipeline import pipeline
from data_pipeline import tfds_builders

SETTINGS = (
    # name, (height, width) of the frames, crop (height, width)
    ("synthetic", (128, 256), (128, 256)),
    ("cityscapes", (1024, 2048), (800, 1600)),
)


def prepare(data_dir, name, size):
  config = tfds_builders.SyntheticBuilderConfig(
      name=f"bench_{name}", height=size[0], width=size[1], num_videos=1,
      num_val_videos=1, seed=0)
  builder = tfds_builders.VpsSynthetic(data_dir=data_dir, config=config,
                                       file_format="array_record")
  builder.download_and_prepare()
  return pipeline.open_source(builder, "train", decode_flow=False)


def throughput(source, index, crop, flow, examples, warmup=2):
  cfg = pipeline.TrainConfig(crop_size=crop, flow=flow, per_device_batch=1,
                             max_instances=32, seed=0)
  ds = pipeline.train_dataset(source, index, cfg, process_index=0,
                              process_count=1, local_devices=1)
  it = ds.as_numpy_iterator()
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(examples):
    next(it)
  return examples / (time.perf_counter() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=None,
                      help="where to build the datasets (default: a temp dir)")
  parser.add_argument("--examples", type=int, default=20,
                      help="timed examples per setting")
  args = parser.parse_args(argv)
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="vps_bench_")
  rows = []
  for name, size, crop in SETTINGS:
    source, index = prepare(data_dir, name, size)
    for flow in ("none", "dis"):
      rate = throughput(source, index, crop, flow, args.examples)
      rows.append((name, f"{size[0]}x{size[1]}", f"{crop[0]}x{crop[1]}",
                   flow, rate))
  print(f"\nInput pipeline, {os.cpu_count()} CPU cores, per_device_batch=1:")
  print(f'{"dataset":<11} {"frames":>10} {"crop":>9} {"flow":>5} '
        f'{"examples/s":>11}')
  for name, frames, crop, flow, rate in rows:
    print(f"{name:<11} {frames:>10} {crop:>9} {flow:>5} {rate:>11.2f}")


if __name__ == "__main__":
  main()
