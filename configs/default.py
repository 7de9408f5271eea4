"""Fields shared by every experiment; each config file overrides a few.

Names that scripts and notebooks rely on (keep them): `seed`, `variant`,
`num_train_steps`, `per_device_batch_size`, `checkpoint_every_steps`,
`log_every_steps`, `eval_every_steps`, `dataset.name`, `dataset.data_dir`.
A config may not add fields that are not here (`vpsnet_jax.train.train.
validate_config` rejects them; `--config.x=...` overrides of unknown fields
are rejected by the locked config).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # VPSNet variant: `base` (image-level Mask R-CNN + heads; today the
  # detector only), `fuse`, `track`, `fusetrack` (need issue 6's model).
  config.variant = "base"
  # A checkpoint of an earlier stage (an orbax step folder) or a torchvision
  # ResNet state-dict file (`.pth`) with ImageNet weights; empty: random init.
  config.init_from = ""

  config.dataset = ml_collections.ConfigDict()
  # One of `vps_synthetic`, `cityscapes_vps`, `viper`.
  config.dataset.name = "vps_synthetic"
  # The folder in the Cityscapes-VPS layout. Empty: WORKDIR/data.
  config.dataset.data_dir = ""
  # The built-in dataset's size (used when dataset.name == "vps_synthetic";
  # written to data_dir on first use when that folder is empty).
  config.dataset.synthetic = ml_collections.ConfigDict()
  config.dataset.synthetic.num_train_videos = 4
  config.dataset.synthetic.num_val_videos = 2
  config.dataset.synthetic.height = 128
  config.dataset.synthetic.width = 256

  # Training input (data_pipeline.pipeline.TrainConfig).
  config.input = ml_collections.ConfigDict()
  config.input.crop_size = (800, 1600)
  config.input.scale_range = (0.8, 1.5)
  config.input.flip_probability = 0.5
  # Reference frames: the neighbouring annotated frames (+-5 raw frames).
  config.input.ref_offsets = (-5, 5)
  config.input.max_instances = 50
  config.input.size_divisor = 32
  # Validation batches per evaluation (0: the whole validation split).
  config.input.num_eval_batches = 0

  # Model (vpsnet_jax.modeling.detector.DetectorConfig for `base`).
  config.model = ml_collections.ConfigDict()
  config.model.depth = 50
  config.model.frozen_stages = 1
  config.model.fpn_dim = 256
  config.model.box_fc_dim = 1024
  config.model.mask_conv_dim = 256
  config.model.anchor_scales = (8.0,)
  config.model.rpn_train_proposals = 2000
  config.model.rpn_test_proposals = 1000
  config.model.rpn_allowed_border = 0.0
  config.model.rcnn_samples = 512
  config.model.max_detections = 100
  config.model.max_candidates = 2000
  # Compute dtype (`float32` or `bfloat16`); parameters stay float32.
  config.model.dtype = "float32"

  # Optimisation (the paper / release): SGD momentum 0.9, lr 0.005 per 8
  # images scaled linearly with the global batch, weight decay 1e-4, linear
  # warm-up of 500 steps from 1/3, x0.1 at `lr_decay_steps`, clipping at
  # global norm 35.
  config.num_train_steps = 28800
  # When > 0, the schedule is in epochs of the training pairs repeated
  # `epoch_repeats` times (the release repeats the VPS training set 8 times
  # per epoch) and num_train_steps / lr_decay_steps are derived from the
  # dataset size and the global batch at the start of a run.
  config.num_epochs = 0
  config.lr_decay_epochs = (8, 11)
  config.epoch_repeats = 1
  config.per_device_batch_size = 1
  # 0: per_device_batch_size * device count. Otherwise the global batch,
  # which must be divisible by the device count (and then defines the
  # per-device batch).
  config.global_batch_size = 0
  config.base_learning_rate = 0.005  # For `learning_rate_batch` images.
  config.learning_rate_batch = 8
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.warmup_steps = 500
  config.warmup_ratio = 1.0 / 3.0
  config.lr_decay_steps = (19200, 26400)
  config.lr_decay_factor = 0.1
  config.grad_clip_norm = 35.0

  # Parallelism: `pmap` (default) or `shard_map` (jax.jit of jax.shard_map
  # over a one-axis data mesh); both run the same per-device step.
  config.parallel = "pmap"

  # Checkpoints (orbax), logging (clu), evaluation.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.log_every_steps = 50
  config.eval_every_steps = 2400
  # Steps to profile (clu periodic_actions.Profile) after the first ones;
  # 0: no profile.
  config.profile_steps = 0

  # Video panoptic quality (eval.vpq).
  config.eval = ml_collections.ConfigDict()
  config.eval.ks = (0, 5, 10, 15)
  config.eval.stride = 5  # Annotation stride lambda, in raw frames.

  # --mode=example: an imperfect prediction derived from the ground truth.
  config.example = ml_collections.ConfigDict()
  config.example.switch_rate = 0.15
  config.example.miss_rate = 0.05
  config.example.erode_px = 1
  return config
