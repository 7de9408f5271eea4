"""Command line: `python -m data_pipeline.synthetic --out DIR [--videos N
--val-videos M --height H --width W --seed S]` writes `vps_synthetic`."""
import argparse
import os

from data_pipeline.synthetic import write


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Write the vps_synthetic dataset in the Cityscapes-VPS "
      "layout.")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--videos", type=int, default=4,
                      help="number of training videos")
  parser.add_argument("--val-videos", type=int, default=None,
                      help="number of validation videos (default: --videos)")
  parser.add_argument("--height", type=int, default=128)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  write.write_dataset(args.out, args.videos, args.val_videos, args.height,
                      args.width, args.seed)
  print(f'Wrote vps_synthetic to {args.out}: VPQ ground truth '
        f'{os.path.join(args.out, "panoptic_gt_val_city_vps.json")} with '
        f'{os.path.join(args.out, "val", "panoptic_video")}')


if __name__ == "__main__":
  main()
