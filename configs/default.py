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
  # VPSNet variant (vpsnet_jax.modeling.vpsnet.VARIANTS): `base` (the
  # image-level model), `align`, `attend`, `fuse` (pixel-level fusion),
  # `track` (object-level tracking), `fusetrack` (the full VPSNet).
  config.variant = "fusetrack"
  # A checkpoint of an earlier stage (an orbax step folder) or a torchvision
  # ResNet state-dict file (`.pth`) with ImageNet weights; empty: random init.
  config.init_from = ""

  config.dataset = ml_collections.ConfigDict()
  # One of `vps_synthetic`, `cityscapes_vps`, `viper`, `cityscapes` (the
  # image-level Cityscapes of configs/cityscapes.py).
  config.dataset.name = "vps_synthetic"
  # The folder in the Cityscapes-VPS layout. Empty: WORKDIR/data.
  config.dataset.data_dir = ""
  # An evaluation subset of the validation split: "" (all of it) or, for
  # viper, "paper" (the paper's 10 day videos x their first 60 frames;
  # data_pipeline.viper).
  config.dataset.subset = ""
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
  # A crop keeping no instance of a frame that has some is redrawn (scale,
  # flip, crop) up to this many times, then the whole frame scaled to fit
  # is used (the release redraws without bound; 0: no redraw).
  config.input.crop_retries = 10
  # Initial optical flow (target -> reference) for the variants that fuse
  # and for the `iou_match` tracker: `dis` (OpenCV DIS on the host,
  # standing in for FlowNet2), `flownet2` (the release's FlowNet2 on the
  # device, in the model's compiled step; needs input.flownet2_checkpoint)
  # or `ground_truth` (vps_synthetic only: its exact motion).
  config.input.flow = "dis"
  # FlowNet2's weights for input.flow='flownet2': FlowNet2_checkpoint.pth.tar
  # (NVIDIA flownet2-pytorch), an .npz of its state dict (release_import's
  # WORKDIR/flownet2_state.npz) or a folder written by
  # `python -m vpsnet_jax.checkpoints.flownet2_import`. Read when training
  # starts (step 0); afterwards the checkpoints carry them.
  config.input.flownet2_checkpoint = ""
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
  # Convolution implementation (vpsnet_jax.ops.conv): 'auto' | 'xla' | 'cpu'.
  # 'xla': lax.conv everywhere (the GPU/TPU path); 'cpu': CPU-tuned im2col /
  # matmul weight gradients; 'auto': 'cpu' when the default JAX backend is
  # the CPU, else 'xla' (resolved once, when the model is built). Same
  # parameters and, to float rounding, the same outputs.
  config.model.conv = "auto"
  # Activation rematerialisation (jax.checkpoint via nn.remat): 'none',
  # 'backbone' (every ResNet block), 'heads' (FPN and every head, fuse and
  # refine included) or 'all'. Less activation memory for more compute
  # (benchmarks/remat.py); the same parameters and results.
  config.model.remat = "none"
  # UPSNet semantic head: deformable-conv widths and GroupNorm groups. The
  # release's UPSNetFPN: 256 -> 256 -> 128 -> 128.
  config.model.semantic_features = (256, 128, 128)
  config.model.semantic_groups = 32
  # Semantic cross-entropy: 'full' (the release: x4 upsampled logits against
  # full-resolution labels) or 'quarter' (the paper: at 1/4 scale; cheaper,
  # see benchmarks/semantic_loss.py).
  config.model.semantic_loss = "full"
  # The Fuse module's feature warp: 'release' (the release's WarpingLayer:
  # grid_sample on a linspace(-1, 1) grid with align_corners=False, about
  # half a pixel off, twice; weights trained by the release expect it) or
  # 'exact' (x + dx).
  config.model.warp_grid = "release"
  # Loss weights of the panoptic and track heads (the release's 0.5; the
  # paper says 1.0 for both).
  config.model.panoptic_weight = 0.5
  config.model.track_weight = 0.5
  config.model.track_dim = 1024
  # Track affinity: dot product (release) or cosine similarity (paper).
  config.model.track_cosine = False
  # Panoptic detections at inference (UPSNet MaskROI): class probability
  # above this after class-agnostic NMS at `panoptic_nms`, at most
  # `max_detections`; mask removal drops masks more than
  # `mask_overlap_threshold` covered by better masks of their class.
  config.model.panoptic_score_threshold = 0.6
  config.model.panoptic_nms = 0.5
  config.model.mask_overlap_threshold = 0.3

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
  # `sgd` (the paper's: momentum, weight decay added to the gradient) or
  # `adamw` (decoupled weight decay; faster from scratch on small budgets).
  config.optimizer = "sgd"
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

  # Evaluation: the benchmark's protocol (eval/protocols.py for VPQ:
  # cityscapes_vps, viper, vipseg; kitti_step: STQ alone, eval/stq.py),
  # which must read the dataset's prediction layout (data_pipeline.sources),
  # the VPQ window sizes and, for cityscapes_vps only, the annotation
  # stride lambda in raw frames (None for the protocols whose windows count
  # annotated frames). STQ is reported beside VPQ for every protocol.
  config.eval = ml_collections.ConfigDict()
  config.eval.protocol = "cityscapes_vps"
  config.eval.ks = (0, 5, 10, 15)
  config.eval.stride = 5

  # Online inference (vpsnet_jax.inference): `track_head` (VPSNet's
  # tracker), the paper's baselines `cls_sort` (ids from class-probability
  # order) and `iou_match` (flow-warped mask IoU, greedy), or `none` (new
  # ids every frame, as Base / Fuse in the paper's Table 4).
  config.tracker = "track_head"
  config.tracking = ml_collections.ConfigDict()
  # Match score of a detection with [new, object 1..m] (track_head):
  # affinity_weight * log_softmax(affinity) + score_weight * log(class
  # probability) + iou_weight * box IoU + class_weight * same class
  # (+ mask_iou_weight * IoU of the flow-warped masks, the paper's extra
  # cue; 0 turns it off). The release's compute_comp_scores: affinity 1,
  # log class probability 1 (it comments out only the detection-score
  # argument, passing the class probability instead), IoU 2, class 10.
  config.tracking.affinity_weight = 1.0
  config.tracking.score_weight = 1.0
  config.tracking.iou_weight = 2.0
  config.tracking.class_weight = 10.0
  config.tracking.mask_iou_weight = 0.0
  # iou_match: smallest IoU of a flow-warped previous mask to keep its id.
  config.tracking.iou_match_threshold = 0.5

  config.inference = ml_collections.ConfigDict()
  # Stuff segments smaller than this (pixels) become void (2048 at
  # Cityscapes' 1024x2048).
  config.inference.stuff_area_limit = 2048
  # Write every frame's prediction, not only the annotated frames'.
  config.inference.write_all_frames = False

  # --mode=predict: a folder of ordered frames (a user's own video).
  config.predict = ml_collections.ConfigDict()
  config.predict.frames_dir = ""
  # Empty: WORKDIR/predict.
  config.predict.output_dir = ""
  config.predict.fps = 5.0

  # --mode=example: an imperfect prediction derived from the ground truth.
  config.example = ml_collections.ConfigDict()
  config.example.switch_rate = 0.15
  config.example.miss_rate = 0.05
  config.example.erode_px = 1
  return config
