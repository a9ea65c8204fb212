"""One loader for every section of ``params.yaml``.

Each section is a frozen dataclass; each field carries its constraints in ``field(metadata=...)``:

    min / max        inclusive numeric bounds
    gt               strict lower bound (``gt=0`` means "positive")
    choices          allowed values (strings, e.g. a location name)
    even             integer must be even
    length           exact length of a list / tuple field
    item_choices     allowed values of each list item
    item_min         lower bound of each numeric list item

``load_section("synth")`` reads the YAML with the same YAML 1.2 semantics DVC uses (ruamel), checks
every key and value, and raises :class:`ParamsError` naming the key, the value and what is allowed,
before a stage does any work. Library code never opens ``params.yaml``; stages pass the dataclass in.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NUSCENES_LOCATIONS = (
    "boston-seaport",
    "singapore-onenorth",
    "singapore-hollandvillage",
    "singapore-queenstown",
)


class ParamsError(ValueError):
    """A params section is missing, has an unknown key, a wrong type or an impossible value."""


class ConfigError(ValueError):
    """A model config field has an impossible value (raised by a model's config dataclass)."""

    def __init__(self, owner: str, key: str, value: Any, why: str):
        self.key, self.value, self.why = key, value, why
        super().__init__(f"{owner}.{key} = {value!r}: {why}")


def config_from_section(cls: type, section: str, params: Any, **extra: Any) -> Any:
    """The model config ``cls`` (a dataclass) from the same-named keys of a params section, plus ``extra``.

    Only the config's own fields are read, so training, loader and report keys never reach a model; a
    :class:`ConfigError` becomes a :class:`ParamsError` naming ``<section>.<key>``."""
    keys = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
    values = {k: tuple(v) if isinstance(v := getattr(params, k), list) else v for k in keys}
    try:
        return cls(**values, **extra)
    except ConfigError as exc:
        raise ParamsError(f"params: {section}.{exc.key} = {exc.value!r}: {exc.why}") from exc


def _f(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with a default, a one-line description and validation rules."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


# --------------------------------------------------------------------------------------------------
# Sections. Each later stage adds its own dataclass here and registers it in SECTIONS.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataParams:
    """Which nuScenes dataroot every downstream stage reads."""

    dataroot: str = _f("data/nuscenes", "nuScenes dataroot (the synthetic world by default)")
    version: str = _f("v1.0-synth", "table folder inside the dataroot: v1.0-synth, v1.0-mini, v1.0-trainval")
    splits: list = _f(["train", "val"], "splits to cache; real versions use the official split lists",
                      item_choices=("train", "val"))


@dataclass(frozen=True)
class SynthParams:
    """The procedurally generated nuScenes-format world written by the synth_world stage."""

    seed: int = _f(0, "master seed; same params and seed give the same bytes", min=0)
    locations: list = _f(["boston-seaport", "singapore-onenorth"],
                         "map locations used (one town each); Singapore drives on the left",
                         item_choices=NUSCENES_LOCATIONS, min_len=1)
    num_scenes: int = _f(10, "number of scenes (assigned round-robin to the locations)", min=2)
    val_scenes: int = _f(3, "scenes held out for the val split (whole scenes)", min=1)
    val_start: int = _f(-1, "index of the first val scene (val = val_scenes scenes from there); -1 = the last "
                        "val_scenes scenes. Scene k is the same whatever num_scenes is, so a bigger world with "
                        "val_start 7 keeps the default world's val scenes", min=-1)
    scene_seconds: float = _f(20.0, "scene length in seconds (key frames at 2 Hz)", min=4.0, max=60.0)
    image_width: int = _f(320, "camera image width in pixels", min=32, even=True)
    image_height: int = _f(180, "camera image height in pixels", min=32, even=True)
    sweep_hz: float = _f(12.0, "CAM_FRONT sweep rate (real nuScenes: 12 Hz)", gt=2.0, max=60.0)
    camera_noise_std: float = _f(0.0, "per-pixel Gaussian sensor noise added to every camera image before JPEG "
                                 "encoding, std in grey levels (0..255); seeded per image; 0 = none", min=0.0, max=50.0)
    jpeg_quality: int = _f(90, "JPEG quality of the camera images (PIL, 1..100)", min=1, max=100)
    town_blocks: int = _f(4, "intersections per side of the town's road grid", min=2, max=8)
    block_length: float = _f(80.0, "distance between neighbouring intersections, metres", min=60.0)
    num_vehicles: int = _f(14, "moving vehicles per scene", min=0)
    num_pedestrians: int = _f(8, "crossing pedestrians per scene", min=0)
    num_parked: int = _f(10, "parked cars per scene", min=0)
    lidar_beams: int = _f(32, "LIDAR_TOP beams (real: 32)", min=4, max=128)
    lidar_azimuth_bins: int = _f(512, "LIDAR_TOP horizontal samples per revolution", min=64)
    track_grid: int = _f(20, "query points per side of the exact-track grid on CAM_FRONT sweeps", min=2)
    track_horizon: int = _f(16, "sweep frames each query grid is tracked for", min=2)
    track_stride: int = _f(8, "sweep frames between re-seeded query grids", min=1)
    workers: int = _f(2, "worker processes for rendering", min=1)


@dataclass(frozen=True)
class CacheParams:
    """The per-split GT cache (planning and vectorised-map ground truth) written by gt_cache."""

    history_steps: int = _f(4, "past key frames kept for ego history (incl. the current one)", min=2)
    future_steps: int = _f(6, "future waypoints at 2 Hz (6 = 3 s)", min=1)
    patch_size: list = _f([60.0, 30.0], "map patch [along-track, cross-track] metres (MapTR 60 x 30)",
                          length=2, item_min=1.0)
    map_points: int = _f(20, "points each map element is resampled to", min=2)
    map_classes: list = _f(["divider", "ped_crossing", "boundary"], "vectorised map classes, in label order",
                           item_choices=("divider", "ped_crossing", "boundary"), min_len=1)
    max_agents: int = _f(64, "agent boxes kept per step (nearest first)", min=1)
    route_distances: list = _f([5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0],
                               "arc lengths (metres, increasing) ahead along the ego's planned route at which the "
                               "route points (the honest route input) are taken; used where the dataroot has an "
                               "ego_route.json", item_min=0.0, min_len=1)
    route_command_distance: float = _f(25.0, "look-ahead along the route (metres) of the point whose lateral "
                                       "offset gives route_command (>= 2 m right RIGHT, <= -2 m left LEFT, else "
                                       "FORWARD; the UniAD / ST-P3 thresholds)", gt=0.0)
    check_files: bool = _f(True, "check every camera and LiDAR file the cache references: present, a camera JPEG "
                           "complete (start and end markers, headers parse), a LiDAR file a whole number of points")
    workers: int = _f(2, "worker processes", min=1)

    def validate(self) -> None:
        d = self.route_distances
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in d) or \
                any(b <= a for a, b in zip(d, d[1:])) or d[0] <= 0:
            raise ParamsError(f"params: cache.route_distances = {d!r}: must be positive numbers (metres), "
                              "strictly increasing")


@dataclass(frozen=True)
class TracksParams:
    """Point tracks on video windows (AMPLIFY conventions) written by the tracks stage."""

    source: str = _f("nuscenes", "videos to track: each scene's CAM_FRONT sweeps of data.dataroot, or a folder of "
                     "video files / of image-sequence folders / multi-view sequences (tracks.input)",
                     choices=("nuscenes", "videos", "frames", "sequences"))
    input: str = _f("data/nuscenes/v1.0-synth", "what the stage reads and DVC watches (the stage's data dependency): "
                    "<data.dataroot>/<data.version> for source nuscenes (checked); for videos, frames and sequences the "
                    "folder of clips: video files, one sub-folder of images per clip, or one multi-view sequence "
                    "folder or a folder of them (each view a clip <sequence>/view<k>, docs/sequences.md)")
    reference: str | None = _f(None, "folder sources: reference tracks to score the tracker against, a folder inside "
                               "tracks.input (so DVC watches it; inside each sequence folder for sequences), holding "
                               "<clip>.npz (tracks + visible in pixels, or TAP-Vid points + occluded) or a SegAnyMo "
                               "folder <clip>/ (dynamic_traj.npy + dynamic_visibility.npy), docs/tracking.md; null = no "
                               "truth: forward-backward consistency and lost-point share instead")
    frames_fps: float = _f(12.0, "frame rate of image-sequence folders (and of videos whose container reports none)",
                           gt=0.0, max=1000.0)
    backend: str = _f("lk", "tracker: lk (OpenCV pyramidal Lucas-Kanade + forward-backward check), cotracker "
                      "(CoTracker3 offline, needs the package and a local checkpoint), oracle (exact synthetic truth)",
                      choices=("lk", "cotracker", "oracle"))
    cotracker_checkpoint: str | None = _f(None, "local CoTracker3 checkpoint (scaled_offline.pth), a state dict of "
                                          "tensors; null unless backend is cotracker")
    cotracker_device: str = _f("cpu", "torch device for the cotracker backend", choices=("cpu", "cuda"))
    target_fps: float = _f(12.0, "frames per second the videos are resampled to (nearest timestamp)",
                           gt=0.0, max=1000.0)
    window: int = _f(16, "frames per window T (AMPLIFY horizon 16)", min=2, max=1024)
    window_stride: int = _f(4, "frames between window starts (the query grid is re-seeded in every window)", min=1)
    image_size: list = _f([128, 128], "[H, W] the frames are resized to before tracking (AMPLIFY 128 x 128)",
                          length=2, item_min=8)
    resize: str = _f("stretch", "fitting a frame into image_size: stretch (each axis on its own, AMPLIFY; a 4:3 frame "
                     "is squashed), pad (aspect kept, black bars) or crop (aspect kept, centre cut)",
                     choices=("stretch", "pad", "crop"))
    grid_size: int = _f(20, "query points per side (N = grid_size^2, AMPLIFY 20 x 20 at +-0.95)", min=1)
    static_rule: str = _f("displacement", "when a point counts as static (not moving while visible; lost or hidden "
                          "frames are no evidence): displacement (largest distance from its query position) or speed "
                          "(largest per-frame step, the first version's rule, sensitive to tracker jitter)",
                          choices=("displacement", "speed"))
    static_threshold: float = _f(0.046875, "static below this, normalised units (2 / H = one pixel of a row; "
                                 "0.046875 = 3 px of a 128-row frame; per frame for rule speed: the first version "
                                 "used 0.004); chosen on noisy fixed-camera footage, docs/tracking.md", min=0.0)
    lk_win_size: int = _f(11, "Lucas-Kanade window side, pixels of the resized frames", min=3, max=101)
    lk_levels: int = _f(3, "Lucas-Kanade pyramid levels above the base image", min=0, max=8)
    lk_fb_threshold: float = _f(1.0, "forward-backward error (pixels of the resized frames) above which a point is "
                                "lost (frozen and marked invisible)", gt=0.0)
    val_fraction: float = _f(0.1, "share of clips in val for folder sources (by a hash of the clip name); with two "
                             "or more clips neither split is left empty", min=0.0, max=1.0)
    val_clips: list | None = _f(None, "folder sources: names of the clips that form val (the others train), "
                                "instead of the hash split; null = hash split")
    allow_upsampling: bool = _f(False, "accept a target_fps above a clip's native rate (which repeats frames, "
                                "inventing still motion); refused by default")
    workers: int = _f(2, "worker processes (one clip at a time each)", min=1)

    def validate(self) -> None:
        def fail(key: str, why: str):
            raise ParamsError(f"params: tracks.{key} = {getattr(self, key)!r}: {why}")

        if any(isinstance(v, bool) or not isinstance(v, int) for v in self.image_size):
            fail("image_size", "items must be integers [H, W] (pixels)")
        if self.grid_size > min(self.image_size):
            fail("grid_size", f"more grid points per side than pixels in image_size {self.image_size}")
        if not isinstance(self.input, str) or not self.input:
            fail("input", "must be a non-empty path string")
        for key in ("reference", "cotracker_checkpoint"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                fail(key, "must be a non-empty path string or null")
        if self.val_clips is not None and (
                not isinstance(self.val_clips, list) or not self.val_clips
                or any(not isinstance(n, str) or not n for n in self.val_clips)
                or len(set(self.val_clips)) != len(self.val_clips)):
            fail("val_clips", "must be null or a non-empty list of distinct clip names (file or folder names)")
        if self.val_clips is not None and self.source == "nuscenes":
            fail("val_clips", "is for folder sources; the nuscenes source uses the dataroot's official splits")
        if self.reference is not None and (Path(self.reference).is_absolute() or ".." in Path(self.reference).parts
                                           or Path(self.reference).parts in ((), (".",))):
            fail("reference", "must be a folder name relative to tracks.input (inside it, so that DVC watches it "
                              "with the clips), without '..'")
        if self.reference is not None and self.source == "nuscenes":
            fail("reference", "is for folder sources; the synthetic world's exact truth scores the nuscenes source")
        if self.backend == "oracle" and self.source != "nuscenes":
            fail("backend", f"the oracle needs the synthetic world's exact truth; source '{self.source}' has none "
                            "(use source: nuscenes with the synthetic dataroot)")
        if self.backend == "cotracker" and self.cotracker_checkpoint is None:
            fail("cotracker_checkpoint", "backend 'cotracker' needs a local checkpoint path (a state dict of "
                                         "tensors, e.g. scaled_offline.pth); no network is used at run time")


@dataclass(frozen=True)
class TokenizerParams:
    """The AMPLIFY motion tokenizer (models/tokenizer) and its training hyperparameters.

    Full AMPLIFY size: hidden_dim 768, num_heads 8, num_layers 2, codebook_size 2048 (30.8 M parameters with
    two views of 400 tracks) and input_scale 1.0; the default is small enough to train in minutes on a CPU.
    The default departs from AMPLIFY in measured ways (docs/tokenizer.md): input_scale 64, batch 8, dropout 0, and
    the token layout (point_groups 4, track_codes 256; AMPLIFY's is point_groups 1, track_codes 0).
    """

    hidden_dim: int = _f(128, "transformer width (AMPLIFY 768); divisible by num_heads", min=8)
    num_heads: int = _f(4, "attention heads (AMPLIFY 8)", min=1)
    num_layers: int = _f(2, "encoder blocks; the decoder gets num_layers // 2 (AMPLIFY 2 -> 1)", min=2)
    decoder_mlp_hidden_dim: int = _f(256, "width of the decoder's per-track ReLU MLP (AMPLIFY 256)", min=1)
    codebook_size: int = _f(512, "nominal codebook size; FSQ levels from AMPLIFY's table on floor(log2): "
                            "16 [5,3], 64 [8,8], 256 [8,6,5], 512 [8,8,8], 1024 [8,5,5,5], 2048 [8,8,6,5] "
                            "(1920 codes), 4096 [7,5,5,5,5] (AMPLIFY 2048)", min=16)
    per_view: bool = _f(False, "one token per (view, step) instead of per step (AMPLIFY false)")
    causal_encoder: bool = _f(True, "causal encoder self-attention: token t sees steps <= t (AMPLIFY true)")
    input_scale: float = _f(64.0, "factor on the velocities the encoder sees (AMPLIFY 1.0: raw normalised "
                            "velocities, one pixel = 2 / H); img_size[0] / 2 = 64 gives pixels per step. Encoder "
                            "input only: labels, loss and metrics are unchanged", gt=0.0)
    dropout: float = _f(0.0, "dropout in the transformers (AMPLIFY attn_pdrop 0.1)", min=0.0, max=0.9)
    loss: str = _f("relative_ce", "relative_ce (AMPLIFY: cross-entropy on the 15x15 displacement classes) or focal",
                   choices=("relative_ce", "focal"))
    focal_gamma: float = _f(2.0, "focal loss: exponent of (1 - p) (0 = cross-entropy)", min=0.0)
    focal_center_weight: float = _f(0.25, "focal loss: weight of elements whose label is the zero-motion class "
                                    "(others 1.0)", min=0.0)
    mask_static: bool = _f(False, "average the loss over non-static points only (the data's static flags)")
    loss_steps: str = _f("all", "steps in the loss: all (AMPLIFY) or visible (a step counts where the track is "
                         "visible at both ends; lost LK points are frozen, a motion no code can predict)",
                         choices=("all", "visible"))
    point_groups: int = _f(4, "tokens per step = point_groups^2 groups of neighbouring tracks on the query grid "
                           "(1 = AMPLIFY: one token per step carries every track)", min=1)
    track_codes: int = _f(256, "nominal codebook size of one more token per track and window (its own motion over "
                          "the window), FSQ levels as codebook_size; 0 = off (AMPLIFY)", min=0)
    rel_cls_img_size: list = _f([15, 15], "[rows, cols] of the relative-displacement class grid, odd "
                                "(AMPLIFY 15 x 15: +-7 px per step)", length=2, item_min=3)
    img_size: list = _f([128, 128], "[H, W] pixel grid the labels and metrics use; one pixel = 2 / H normalised "
                        "(AMPLIFY 128 x 128; match tracks.image_size)", length=2, item_min=2)
    epochs: int = _f(12, "training epochs (AMPLIFY 100)", min=1)
    eval_every_epochs: int = _f(6, "validate every N epochs and after the last (the DVCLive val curve and "
                                "best.safetensors; the trained weights do not depend on it)", min=1)
    batch_size: int = _f(8, "windows per optimiser step (AMPLIFY 256)", min=1)
    lr: float = _f(1.0e-3, "AdamW learning rate (AMPLIFY 1e-4 at full size)", gt=0.0)
    weight_decay: float = _f(0.0, "AdamW weight decay (AMPLIFY 0.0)", min=0.0)
    warmup_steps: int = _f(0, "linear learning-rate warm-up steps (AMPLIFY none)", min=0)
    grad_clip: float = _f(1.0, "gradient-norm clip, 0 = off (AMPLIFY off)", min=0.0)
    seed: int = _f(0, "seed of initialisation and batch order", min=0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Types here; rules between architecture keys (FSQ levels, head width) live in ``TokenizerConfig``."""
        def fail(key: str, why: str):
            raise ParamsError(f"params: tokenizer.{key} = {getattr(self, key)!r}: {why}")

        for key in ("hidden_dim", "num_heads", "num_layers", "codebook_size"):
            if isinstance(getattr(self, key), bool) or not isinstance(getattr(self, key), int):
                fail(key, "must be an integer")
        scale = self.input_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            fail("input_scale", "must be a finite number > 0 (AMPLIFY 1.0)")
        for key in ("rel_cls_img_size", "img_size"):
            value = getattr(self, key)
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
                fail(key, "must be two integers [rows, cols]")


@dataclass(frozen=True)
class PlannerParams:
    """ViT Planner V2 (models/planner/model.py): model sizes and training hyperparameters.

    Seed V1 size: img_size 518, embed_dim 2048 (``vggt_embed_dim``); the default is small enough for a CPU.
    """

    cameras: list = _f(["CAM_FRONT"], "cameras whose frames the encoder sees, in input order",
                       item_choices=("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                                     "CAM_BACK_RIGHT"), min_len=1)
    frames: int = _f(4, "input frames per camera: the current key frame and the previous ones (seed 4)", min=1)
    img_size: int = _f(128, "square input side in pixels (seed V2 128, V1 518); pixels past the last whole "
                       "patch are dropped", min=1)
    patch_size: int = _f(14, "ViT patch side in pixels (seed 14)", min=1)
    embed_dim: int = _f(128, "encoder width (seed vggt_embed_dim 2048); divisible by num_heads", min=8)
    depth: int = _f(2, "encoder self-attention blocks", min=1)
    num_heads: int = _f(2, "encoder heads; with use_rope the head width must be divisible by 4", min=1)
    mlp_ratio: float = _f(4.0, "MLP width / block width in encoder and decoder blocks", gt=0.0)
    use_rope: bool = _f(True, "2-D RoPE on the spatial axes in encoder attention; false: learnable absolute "
                        "spatial position embeddings (seed --no_rope)")
    rope_theta: float = _f(100.0, "RoPE base: frequencies theta^(-2i/d) per spatial axis", gt=1.0)
    use_2x2_compression: bool = _f(True, "connector concatenates each 2x2 block of patches and maps it by an MLP; "
                                   "false: a plain linear projection per patch")
    compression_hidden_dim: int = _f(0, "hidden width of the 2x2 compression MLP (0 = 4 * embed_dim, the "
                                     "concatenated width)", min=0)
    compression_num_layers: int = _f(2, "linear layers of the 2x2 compression MLP (seed 2; 1 = one linear map)",
                                     min=1)
    odd_grid: str = _f("pad", "2x2 compression of an odd patch grid: pad (zero row/column at the bottom/right, "
                       "9x9 -> 5x5, keeps every patch) or crop (drop the last row/column, 9x9 -> 4x4 as in the seed)",
                       choices=("pad", "crop"))
    decoder_dim: int = _f(128, "connector output and decoder width; divisible by decoder_heads", min=8)
    decoder_heads: int = _f(2, "decoder heads", min=1)
    decoder_layers: int = _f(2, "decoder blocks (self-attention over queries, cross-attention to tokens, MLP)",
                             min=1)
    future_steps: int = _f(6, "future waypoints, one decoder query each (6 at 2 Hz = 3 s; match cache)", min=1)
    dt: float = _f(0.5, "seconds between waypoints; waypoints = cumulative sum of velocity * dt", gt=0.0)
    use_ego_status: bool = _f(True, "feed the cache's ego status [speed, a_long, yaw_rate, vx, vy] (standardised "
                              "with train-set statistics), embedded and added to every decoder query")
    ego_status_dim: int = _f(5, "length of the ego-status vector; must equal the cache's ego_status width (5)",
                             min=1)
    route_input: str = _f("points", "honest route input of the planner (the cache's route_* arrays, from the world's "
                          "ego route; on real nuScenes only the command, by the UniAD / ST-P3 GT rule): none, command "
                          "(one-hot route_command) or points (command + route_points ahead); embedded and added to "
                          "every decoder query", choices=("none", "command", "points"))
    ego_path: str = _f("residual", "how ego state reaches the waypoints: residual (waypoints = the trained Ego-MLP's "
                       "path + a correction decoded from images, ego status and route), fused (waypoints = an "
                       "Ego-MLP-shaped MLP trained with the planner from scratch over the Ego-MLP's inputs and the "
                       "perception head's predicted corridor values; no decoder) or queries (the seed: ego status "
                       "only added to the decoder queries)", choices=("queries", "residual", "fused"))
    ego_path_trainable: bool = _f(False, "residual: fine-tune the Ego-MLP path with the planner (false: frozen, the "
                                  "planner learns only the correction)")
    perception_weight: float = _f(0.0, "weight of the auxiliary perception loss: a head on the current frame's "
                                  "image tokens predicts the nearest agent in the route corridor ahead (gap, "
                                  "presence, speed: models/planner/perception.py, GT from the cache's agent boxes); "
                                  "0 = no head unless ego_path is fused", min=0.0)
    select_scenes: int = _f(1, "last scenes of the train split held out (not trained on) to select best.safetensors "
                            "of both models; the val split is only reported", min=1)
    epochs: int = _f(12, "training epochs", min=1)
    batch_size: int = _f(16, "samples per optimiser step", min=1)
    lr: float = _f(5.0e-4, "AdamW learning rate", gt=0.0)
    weight_decay: float = _f(0.05, "AdamW weight decay", min=0.0)
    warmup_steps: int = _f(30, "linear learning-rate warm-up steps", min=0)
    grad_clip: float = _f(1.0, "gradient-norm clip, 0 = off", min=0.0)
    seed: int = _f(0, "seed of initialisation and batch order", min=0)
    amp: bool = _f(False, "mixed precision (bf16 autocast on CPU, fp16 + GradScaler on CUDA)")
    num_workers: int = _f(0, "DataLoader worker processes per rank", min=0)
    image_cache_mb: int = _f(1024, "decode and resize every input image once when all of them fit in this many "
                             "MB (uint8); otherwise decode per sample", min=0)
    mlp_hidden_dim: int = _f(512, "Ego-MLP baseline (AD-MLP-like) hidden width", min=1)
    mlp_layers: int = _f(3, "Ego-MLP linear layers (AD-MLP: 3)", min=1)
    mlp_use_command: bool = _f(False, "Ego-MLP also reads the GT high-level command, which is derived from the GT "
                               "future (a leak; AD-MLP uses it): an ablation only")
    mlp_route_input: str = _f("points", "honest route input of the Ego-MLP, as route_input: none, command or points",
                              choices=("none", "command", "points"))
    mlp_epochs: int = _f(60, "Ego-MLP training epochs", min=1)
    mlp_lr: float = _f(1.0e-3, "Ego-MLP AdamW learning rate", gt=0.0)
    figure_samples: int = _f(6, "validation samples drawn as BEV + camera figures by report_planner", min=0)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Types here; rules between architecture keys (head width, patch grid) live in ``PlannerConfig``."""
        def fail(key: str, why: str):
            raise ParamsError(f"params: planner.{key} = {getattr(self, key)!r}: {why}")

        for key in ("frames", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "compression_hidden_dim",
                    "compression_num_layers", "decoder_dim", "decoder_heads", "decoder_layers", "future_steps",
                    "ego_status_dim", "select_scenes"):
            if isinstance(getattr(self, key), bool) or not isinstance(getattr(self, key), int):
                fail(key, "must be an integer")


@dataclass(frozen=True)
class GeometryParams:
    """The temporal multi-view geometry model (models/geometry, vggt_t_mv). Full size: img_size 518, embed_dim 1024,
    num_heads 16, encoder_depth 24, depth 24, pi3_layers 18, mask_layer 8, mask_hidden_dim 256, camera_trunk_depth 4,
    camera_iterations 4, dpt_features 256, dpt_out_channels [256, 512, 1024, 1024]."""

    img_size: int = _f(112, "the encoder's built size in pixels (pos_embed grid img_size / patch_size); other input "
                       "sizes interpolate it", min=14)
    patch_size: int = _f(14, "patch side (DINOv2 / VGGT / Pi3: 14)", min=1)
    embed_dim: int = _f(64, "encoder and aggregator width (full 1024)", min=4)
    num_heads: int = _f(4, "attention heads (full 16); embed_dim / num_heads divisible by 4 (2-D RoPE)", min=1)
    mlp_ratio: float = _f(4.0, "MLP hidden width / embed_dim", gt=0.0)
    encoder_depth: int = _f(2, "DINOv2 encoder blocks (full 24)", min=1)
    depth: int = _f(4, "Time-SA + View-SA layers (full 24)", min=1)
    num_register_tokens: int = _f(4, "register tokens per frame (VGGT / PAGE-4D: 4)", min=1)
    rope_theta: float = _f(100.0, "2-D RoPE base frequency (VGGT / Pi3: 100)", gt=0.0)
    time_rope: bool = _f(False, "relative time rotation in Time-SA on top of the 2-D RoPE (off: the converted "
                         "sources never saw it; docs/geometry.md)")
    time_rope_theta: float = _f(100.0, "time rotation base frequency", gt=0.0)
    aa_order: list = _f(["time", "view"], "attention order in each layer (Pi3: frame then global)",
                        item_choices=("time", "view"), length=2)
    pi3_layers: int = _f(3, "layers whose Time-SA / View-SA blocks come from Pi3's decoder (full 18); the others "
                         "from PAGE-4D", min=0)
    mask_layer: int | None = _f(None, "first two-stream layer; the mask head reads Time-SA of the layer before "
                                "(null: depth // 3, 8 at full depth)")
    mask_head: str = _f("eval", "PAGE-4D mask head variant: eval (checkpoint_150.pt) or official (kaichen-z/PAGE4D)",
                        choices=("eval", "official"))
    mask_hidden_dim: int = _f(16, "official mask head's pointwise width (PAGE-4D: 256)", min=1)
    mask_gating: str = _f("scalar", "fusion with an external mask: scalar (M = sigmoid(a M~ + b M_ext)) or mlp",
                          choices=("scalar", "mlp"))
    two_stream: str = _f("shared", "pose / geometry streams from mask_layer: shared (same blocks twice), separate "
                         "(copied blocks) or off", choices=("shared", "separate", "off"))
    head_layers: list | None = _f(None, "the four layers the DPT heads read (null: VGGT's 4, 11, 17, 23 scaled)")
    camera_trunk_depth: int = _f(2, "camera head trunk blocks (VGGT 4)", min=1)
    camera_iterations: int = _f(2, "camera head refinement iterations (VGGT 4)", min=1)
    dpt_features: int = _f(32, "DPT fusion width (VGGT 256)", min=4)
    dpt_out_channels: list = _f([16, 32, 64, 64], "DPT per-layer widths (VGGT 256, 512, 1024, 1024)", length=4,
                                item_min=4)
    global_every: int = _f(0, "a sparse global attention block over all T*V frames after every k-th layer; 0 = off",
                           min=0)
    global_strategy: str = _f("landmarks", "sparse global keys: landmarks (top-K patches per frame by the dynamic "
                              "mask), dilated (strided patch grid) or memory (learnable memory tokens)",
                              choices=("landmarks", "dilated", "memory"))
    global_landmarks: int = _f(8, "landmarks: patches per frame (full size: 64)", min=1)
    global_stride: int = _f(2, "dilated: every stride-th patch row and column", min=1)
    global_memory: int = _f(16, "memory: memory tokens (full size: 256)", min=1)
    use_mask: bool = _f(True, "run the dynamic mask head and bias the two streams with it (false: no mask, no bias)")
    epipolar: bool = _f(True, "epipolar prior in View-SA when calibration is given (a bias decreasing with the "
                        "distance to the epipolar line; strength learnable, 0 at init)")
    epipolar_sigma: float = _f(0.0, "epipolar prior width in pixels; 0 = the patch size", min=0.0)
    activation_checkpointing: bool = _f(False, "recompute each attention block in backward (training memory)")


@dataclass(frozen=True)
class ConvertParams:
    """Pi3 + PAGE-4D -> the geometry model's initial weights (stage convert_weights)."""

    checkpoint_dir: str = _f("checkpoints", "folder holding the real source checkpoints (the stage's data "
                             "dependency)")
    pi3: str | None = _f(None, "Pi3 ckpts/model.safetensors, a file name in checkpoint_dir; null = seeded random "
                         "weights in Pi3's exact key layout at the configured size")
    page4d: str | None = _f(None, "PAGE-4D checkpoint (e.g. checkpoint_150.pt, state dict under 'model'), a file "
                            "name in checkpoint_dir; null = seeded random weights in PAGE-4D's layout")
    seed: int = _f(0, "seed of random sources and of freshly initialised parameters", min=0)
    register_slots: list = _f([1, 2, 3, 4], "which of Pi3's 5 register tokens become the 4 registers (slot 0 is "
                              "left to PAGE-4D's camera token, docs/geometry.md)", min_len=1)

    def validate(self) -> None:
        def fail(key: str, why: str):
            raise ParamsError(f"params: convert.{key} = {getattr(self, key)!r}: {why}")

        slots = self.register_slots
        if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 5 for v in slots) \
                or len(set(slots)) != len(slots):
            fail("register_slots", "must be distinct integers in 0..4 (Pi3 has 5 register tokens)")
        for key in ("pi3", "page4d"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value or Path(value).is_absolute()
                                      or ".." in Path(value).parts):
                fail(key, "must be null or a file name inside convert.checkpoint_dir (so DVC watches it)")


@dataclass(frozen=True)
class TrainGeometryParams:
    """Training and evaluation windows of the geometry model (stages train_geometry, report_geometry)."""

    source: str = _f("nuscenes", "windows from the GT cache and its dataroot (nuscenes) or from multi-view sequence "
                     "folders (sequences: train_geometry.input, docs/sequences.md)", choices=("nuscenes", "sequences"))
    input: str = _f("data/nuscenes/v1.0-synth", "what the stage reads and DVC watches: <data.dataroot>/<data.version> "
                    "for source nuscenes (checked); for sequences a folder of multi-view sequence folders")
    val_sequences: list | None = _f(None, "sequences: names of the sequence folders that form val (the others "
                                    "train); null = the last folder in sorted order")
    depth_unit: float = _f(1.0, "sequences: metres per stored depth unit (0.001 for millimetre PNGs)", gt=0.0)
    masks: str = _f("masks", "sequences: the dynamic-mask folder inside each sequence (masks/view_<k>/<t>.png)")
    external_mask: bool = _f(False, "sequences: feed the folder's masks to the model as M_ext (e.g. SegAnyMo's), in "
                             "training and evaluation; the mask loss and mask metric are then left out")
    frames: int = _f(2, "T: consecutive key frames per window (2 Hz in nuScenes)", min=1)
    cameras: list = _f(["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                        "CAM_BACK_RIGHT"], "the V cameras of a window, in this order (view 0 is the reference)",
                       item_choices=("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                                     "CAM_BACK_RIGHT"), min_len=1)
    image_size: list = _f([84, 154], "[H, W] the images are resized to (multiples of geometry.patch_size)",
                          length=2, item_min=14)
    window_stride: int = _f(2, "key frames between training window starts (val windows do not overlap)", min=1)
    scale: float = _f(10.0, "metres per model unit: depth, points and translations are divided by it in the loss "
                      "and multiplied back before every metric (one global constant; nuScenes is metric)", gt=0.0)
    camera_weight: float = _f(1.0, "weight of the camera (pose encoding) loss", min=0.0)
    depth_weight: float = _f(1.0, "weight of the confidence-weighted depth loss (LiDAR supervision)", min=0.0)
    points_weight: float = _f(1.0, "weight of the confidence-weighted world-point loss", min=0.0)
    mask_weight: float = _f(1.0, "weight of the dynamic-mask loss against the synthetic world's exact masks; 0 = off",
                            min=0.0)
    pose_gamma: float = _f(0.6, "camera loss weight ratio between consecutive refinement iterations", gt=0.0)
    conf_alpha: float = _f(0.2, "weight of -log(confidence) in the aleatoric depth / point losses", min=0.0)
    epochs: int = _f(3, "passes over the training windows", min=1)
    eval_every_epochs: int = _f(3, "validate every N epochs and after the last (the DVCLive val curve and "
                                "best.safetensors; the trained weights do not depend on it)", min=1)
    batch_size: int = _f(2, "windows per optimizer step (global under DDP)", min=1)
    lr: float = _f(2.0e-3, "peak AdamW learning rate (a group's lr = lr * its multiplier)", gt=0.0)
    lr_converted: float = _f(1.0, "lr multiplier of the converted encoder and Time-SA / View-SA blocks", min=0.0)
    lr_heads: float = _f(1.0, "lr multiplier of the camera / depth / point heads", min=0.0)
    lr_new: float = _f(5.0, "lr multiplier of the new parameters (mask head, gate, lambdas, epipolar, memory)",
                       min=0.0)
    weight_decay: float = _f(0.01, "AdamW weight decay (matrices only)", min=0.0)
    warmup_steps: int = _f(10, "linear warm-up steps", min=0)
    grad_clip: float = _f(1.0, "gradient-norm clip, 0 = off", min=0.0)
    amp: bool = _f(False, "bf16 autocast on CPU (fp16 + GradScaler on CUDA)")
    seed: int = _f(0, "seed of initialisation order and batch order", min=0)
    figure_windows: int = _f(3, "validation windows drawn by report_geometry", min=0)
    image_cache_mb: int = _f(1024, "train_geometry keeps every decoded window (images, LiDAR depth, truth) in memory "
                             "after its first read while they fit in this many MiB; 0 = read each time", min=0)

    def validate(self) -> None:
        def fail(key: str, why: str):
            raise ParamsError(f"params: train_geometry.{key} = {getattr(self, key)!r}: {why}")

        if not isinstance(self.input, str) or not self.input:
            fail("input", "must be a non-empty path string")
        if not isinstance(self.masks, str) or not self.masks or Path(self.masks).is_absolute() \
                or ".." in Path(self.masks).parts:
            fail("masks", "must be a folder name inside each sequence folder, without '..'")
        if self.val_sequences is not None and (
                not isinstance(self.val_sequences, list) or not self.val_sequences
                or any(not isinstance(n, str) or not n for n in self.val_sequences)
                or len(set(self.val_sequences)) != len(self.val_sequences)):
            fail("val_sequences", "must be null or a non-empty list of distinct sequence folder names")
        if self.source == "nuscenes":
            for key, default in (("val_sequences", None), ("external_mask", False)):
                if getattr(self, key) != default:
                    fail(key, "is for source sequences; the nuscenes source uses the dataroot's official splits "
                              "and has no external masks")


@dataclass(frozen=True)
class MapDetParams:
    """The map detector: image encoder + Q-Former + frozen language model + map queries + map decoder (stages
    train_mapdet, report_mapdet). The seed's sizes are ``MapDetConfig.full_size()`` (EVA ViT-g 336 px, BLIP-2's
    Q-Former 768 x 12 with 32 queries, LLaMA-2-7B, 50 x 20 queries); the default is small enough for a CPU."""

    cameras: list = _f(["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                        "CAM_BACK_RIGHT"], "cameras of a key frame, in this order (each gets a camera embedding)",
                       item_choices=("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                                     "CAM_BACK_RIGHT"), min_len=1)
    image_size: int = _f(112, "square side S the images are resized to (seed 336), a multiple of patch_size", min=14)
    image_cache_mb: int = _f(1024, "decode every resized image once when all of them fit in this many MiB", min=0)
    patch_size: int = _f(14, "image encoder patch side (BLIP-2's EVA ViT: 14)", min=1)
    vision_width: int = _f(48, "image encoder width (EVA ViT-g 1408)", min=1)
    vision_layers: int = _f(2, "image encoder blocks (EVA ViT-g in BLIP-2: 39)", min=1)
    vision_heads: int = _f(4, "image encoder heads (16)", min=1)
    vision_intermediate: int = _f(96, "image encoder MLP width (6144)", min=1)
    freeze_encoder: bool = _f(True, "keep the image encoder frozen (the seed)")
    qformer_width: int = _f(64, "Q-Former hidden size (BLIP-2 768)", min=1)
    qformer_layers: int = _f(2, "Q-Former layers (12)", min=1)
    qformer_heads: int = _f(4, "Q-Former heads (12)", min=1)
    qformer_intermediate: int = _f(128, "Q-Former FFN width (3072)", min=1)
    cross_attention_frequency: int = _f(2, "a Q-Former layer cross-attends the images every this many layers (2)",
                                        min=1)
    qformer_encoder_width: int = _f(48, "width the Q-Former's cross-attention K/V read (BLIP-2 1408); a different "
                                    "vision_width adds a trainable projection in front, keeping BLIP-2's K/V", min=1)
    num_query_tokens: int = _f(16, "Q-Former query tokens = visual tokens the language model reads (BLIP-2 32)",
                               min=1)
    lm_type: str = _f("llama", "language model family", choices=("llama", "qwen2"))
    lm_width: int = _f(64, "language model hidden size (LLaMA-2-7B 4096, Qwen2-7B 3584)", min=1)
    lm_layers: int = _f(2, "language model layers (32 / 28)", min=1)
    lm_heads: int = _f(4, "attention heads (32 / 28)", min=1)
    lm_kv_heads: int = _f(4, "key/value heads (32 / 4)", min=1)
    lm_intermediate: int = _f(172, "SwiGLU width (11008 / 18944)", min=1)
    lm_vocab: int = _f(256, "vocabulary rows (32000 / 152064); the random default LM reads UTF-8 bytes", min=1)
    lm_max_positions: int = _f(1024, "context length; [visual; prompt; queries] must fit (4096 / 131072)", min=1)
    lm_rope_theta: float = _f(10000.0, "RoPE base (10000 / 1e6)", gt=0.0)
    lm_rms_eps: float = _f(1.0e-5, "RMSNorm epsilon (1e-5 / 1e-6)", gt=0.0)
    freeze_lm: bool = _f(True, "keep the language model frozen (no gradient to its weights, no optimiser state; "
                         "gradients still flow through it); false trains it at lr_lm")
    lm_dtype: str = _f("float32", "dtype of the language model's weights: bfloat16 for a 7B model on a GPU (Qwen2 is "
                       "native bf16 and refuses float16); float32 on CPU. Other dtypes need freeze_lm",
                       choices=("float32", "bfloat16", "float16"))
    blip2_checkpoint: str | None = _f(None, "folder of a real BLIP-2 checkpoint (vision_model.* + query_tokens + "
                                      "qformer.*, e.g. Salesforce/blip2-opt-2.7b); null = seeded random tensors in "
                                      "its layout (flagged in the provenance)")
    lm_checkpoint: str | None = _f(None, "folder of a real LLaMA / Qwen2 checkpoint with its tokenizer; null = "
                                   "seeded random tensors in the layout (flagged)")
    prompt: str = _f("Detect the map elements: lane dividers, pedestrian crossings and road boundaries.",
                     "the text the language model reads between the visual tokens and the map queries")
    num_instances: int = _f(30, "map query instances I (MapTR 50); the model predicts I elements", min=1)
    decoder_width: int = _f(64, "map decoder width", min=1)
    decoder_layers: int = _f(1, "map decoder transformer blocks over the I x P query states", min=0)
    decoder_heads: int = _f(4, "map decoder heads", min=1)
    cls_weight: float = _f(2.0, "focal classification weight (MapTR 2) in the loss and the matching cost", min=0.0)
    pts_weight: float = _f(5.0, "point L1 weight (MapTR 5) in the loss and the matching cost", min=0.0)
    dir_weight: float = _f(0.005, "edge-direction loss weight (MapTR 0.005)", min=0.0)
    epochs: int = _f(20, "passes over the training samples (seed 24)", min=1)
    eval_every_epochs: int = _f(5, "validate every N epochs and after the last (the DVCLive val curve and "
                                "best.safetensors; the trained weights do not depend on it)", min=1)
    batch_size: int = _f(4, "samples per optimizer step (global under DDP; seed 4)", min=1)
    lr_qformer: float = _f(2.0e-4, "Q-Former group lr (seed 1e-5 for a pretrained BLIP-2 Q-Former; the default "
                           "one is random, so it learns from scratch)", gt=0.0)
    lr_queries: float = _f(1.0e-3, "map-query group lr (seed 1e-4)", gt=0.0)
    lr_decoder: float = _f(1.0e-3, "decoder group lr (seed 1e-4)", gt=0.0)
    lr_lm: float = _f(1.0e-4, "language model lr when freeze_lm is false", gt=0.0)
    weight_decay: float = _f(0.01, "AdamW weight decay on every trained parameter (seed 0.01)", min=0.0)
    warmup_steps: int = _f(50, "linear warm-up steps (seed 500)", min=0)
    grad_clip: float = _f(0.1, "gradient-norm clip (seed 0.1), 0 = off", min=0.0)
    amp: bool = _f(False, "mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA (the seed)")
    keep_every_epochs: int = _f(0, "also keep epoch_NNNN.safetensors every N epochs (last.safetensors is written "
                                "every epoch for resume); 0 = never", min=0)
    seed: int = _f(0, "seed of initialisation, random sources and batch order", min=0)
    figure_samples: int = _f(4, "validation samples drawn by report_mapdet", min=0)

    def validate(self) -> None:
        def fail(key: str, why: str):
            raise ParamsError(f"params: mapdet.{key} = {getattr(self, key)!r}: {why}")

        if self.image_size % self.patch_size:
            fail("image_size", f"must be a multiple of patch_size = {self.patch_size}")
        if len(set(self.cameras)) != len(self.cameras):
            fail("cameras", "must not repeat a camera")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            fail("prompt", "must be a non-empty string")
        if self.lm_dtype != "float32" and not self.freeze_lm:
            fail("lm_dtype", "a trained language model keeps float32 weights (AdamW on half-precision weights loses "
                             "its updates); use amp for mixed precision")
        if self.lm_dtype == "float16" and self.lm_type == "qwen2":
            fail("lm_dtype", "Qwen2 overflows in float16; use bfloat16")
        for key in ("blip2_checkpoint", "lm_checkpoint"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                fail(key, "must be a folder path or null")


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "synth": SynthParams,
    "cache": CacheParams,
    "tracks": TracksParams,
    "tokenizer": TokenizerParams,
    "planner": PlannerParams,
    "geometry": GeometryParams,
    "convert": ConvertParams,
    "train_geometry": TrainGeometryParams,
    "mapdet": MapDetParams,
}


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------


def read_params_file(path: str | Path = "params.yaml") -> dict:
    """Parse ``params.yaml`` with YAML 1.2 semantics (as DVC does: ``1e-4`` is a float); a top-level section
    that is not in ``SECTIONS`` (a misspelled ``cahce:``) is refused like a misspelled key."""
    from ruamel.yaml import YAML

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = YAML(typ="safe", pure=True).load(path.read_text())
    except Exception as exc:  # ruamel raises several parser error types
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS), key=str)
    if unknown:
        raise ParamsError(f"{path}: unknown section '{unknown[0]}'; known sections: {list(SECTIONS)}")
    return data


def load_section(name: str, path: str | Path = "params.yaml", overrides: dict | None = None):
    """Read and validate one section of ``params.yaml``; ``overrides`` replaces individual keys (``-S``)."""
    raw = read_params_file(path)
    if name not in raw:
        raise ParamsError(f"{path}: section '{name}' is missing")
    values = dict(raw[name] or {})
    values.update(overrides or {})
    source = f"{path} with -S " + ", ".join(f"{name}.{k}" for k in overrides) if overrides else str(path)
    return parse_section(name, values, source=source)


def parse_section(name: str, values: dict, source: str = "params"):
    """Validate a dict against the dataclass registered for section ``name``."""
    if name not in SECTIONS:
        raise ParamsError(f"{source}: unknown section '{name}'; known: {sorted(SECTIONS)}")
    cls = SECTIONS[name]
    if not isinstance(values, dict):
        raise ParamsError(f"{source}: section '{name}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamsError(
            f"{source}: unknown key '{name}.{unknown[0]}'; allowed keys in '{name}': {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, f in fields.items():
        if key not in values:
            continue
        checked[key] = _check_value(f"{name}.{key}", values[key], hints[key], f.metadata, source)
    obj = cls(**checked)
    post = getattr(obj, "validate", None)
    if post is not None:
        post()
    _cross_checks(name, obj, source)
    return obj


def _describe(meta: dict) -> str:
    parts = []
    for key, text in (("min", ">= {}"), ("gt", "> {}"), ("max", "<= {}")):
        if key in meta:
            parts.append(text.format(meta[key]))
    if meta.get("even"):
        parts.append("even")
    if "choices" in meta:
        parts.append(f"one of {list(meta['choices'])}")
    return ", ".join(parts)


def _check_value(key: str, value: Any, hint: Any, meta: dict, source: str) -> Any:
    def fail(why: str):
        raise ParamsError(f"{source}: {key} = {value!r}: {why}")

    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            fail("must be true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"must be an integer ({_describe(meta) or 'any'})")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"must be a number ({_describe(meta) or 'any'})")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            fail("must be finite")
    elif hint is str:
        if not isinstance(value, str) or not value:
            fail("must be a non-empty string")
    elif hint is list or origin is list:
        if not isinstance(value, list):
            fail("must be a list")
        if "length" in meta and len(value) != meta["length"]:
            fail(f"must have exactly {meta['length']} items")
        if "min_len" in meta and len(value) < meta["min_len"]:
            fail(f"must have at least {meta['min_len']} item(s)")
        for item in value:
            if "item_choices" in meta and item not in meta["item_choices"]:
                fail(f"item {item!r} is not allowed; allowed: {list(meta['item_choices'])}")
            if "item_min" in meta:
                if isinstance(item, bool) or not isinstance(item, (int, float)) or item < meta["item_min"]:
                    fail(f"item {item!r} must be a number >= {meta['item_min']}")
        if "item_choices" in meta and len(set(map(str, value))) != len(value):
            fail("items must not repeat")
        return list(value)
    elif origin in (typing.Union, types.UnionType):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            fail(f"must be >= {meta['min']}")
        if "gt" in meta and value <= meta["gt"]:
            fail(f"must be > {meta['gt']}")
        if "max" in meta and value > meta["max"]:
            fail(f"must be <= {meta['max']}")
        if meta.get("even") and int(value) % 2:
            fail("must be even")
    if "choices" in meta and value not in meta["choices"]:
        fail(f"must be one of {list(meta['choices'])}")
    return value


def _cross_checks(name: str, obj: Any, source: str) -> None:
    """Constraints that involve more than one key of a section."""
    if name == "synth":
        if obj.val_scenes >= obj.num_scenes:
            raise ParamsError(
                f"{source}: synth.val_scenes = {obj.val_scenes}: must be smaller than "
                f"synth.num_scenes = {obj.num_scenes} (at least one train scene)")
        if obj.val_start + obj.val_scenes > obj.num_scenes:
            raise ParamsError(
                f"{source}: synth.val_start = {obj.val_start}: val scenes {obj.val_start}.."
                f"{obj.val_start + obj.val_scenes - 1} run past the last scene ({obj.num_scenes - 1}); "
                f"allowed: -1 (the last synth.val_scenes) or 0..{obj.num_scenes - obj.val_scenes}")
        if obj.track_horizon > obj.scene_seconds * obj.sweep_hz:
            raise ParamsError(
                f"{source}: synth.track_horizon = {obj.track_horizon}: longer than a scene "
                f"({obj.scene_seconds} s at {obj.sweep_hz} Hz)")


def describe_sections() -> str:
    """Every section, key, default and help text: the reference printed in docs/params.md."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"## `{name}`\n\n| key | default | allowed | meaning |\n| --- | --- | --- | --- |")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            allowed = _describe(f.metadata) or ""
            if "item_choices" in f.metadata:
                allowed = f"items from {list(f.metadata['item_choices'])}"
            lines.append(f"| `{f.name}` | `{default}` | {allowed} | {f.metadata.get('help', '')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # print the params reference (docs/params.md)
    print(describe_sections())
