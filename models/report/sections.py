"""The report's content, one function per part of the pipeline, read only from what the stages wrote.

Each ``*_section(reports)`` returns document blocks: what ran (data sizes, the params that differ from the
defaults), the headline table as ``dvc exp show`` sees it (model beside its baselines, and the ceiling where one
exists), the verdicts, and the key figures. Nothing is recomputed: the numbers are the stages' ``metrics`` and
``details`` files, the figures their PNGs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .document import Figures, Heading, Paragraph, Table, Verdicts, fmt


class ReportInputError(ValueError):
    """A stage output the report needs is missing or unreadable: names the file."""


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReportInputError(f"{path}: missing (run the stage that writes it: dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: not valid JSON: {exc}") from exc


def figures(folder: Path, names: list[str]) -> list[Path]:
    paths = [folder / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ReportInputError(f"figure(s) missing: {missing} (run the stage that draws them)")
    return paths


# Keys that never change an output's bytes (workers, caches, checkpointing): no stage lists them in dvc.yaml, so the
# report leaves them out too (tests/test_dvc_contract.py checks dvc.yaml against this set).
NO_OUTPUT_KEYS = frozenset({
    "synth.workers", "cache.workers", "cache.check_files", "tracks.workers", "planner.num_workers",
    "planner.image_cache_mb", "mapdet.image_cache_mb", "train_geometry.image_cache_mb",
    "geometry.activation_checkpointing"})


def changed_params(params: dict) -> dict[str, dict]:
    """``{section: {key: (value, default)}}`` for every key of params.yaml that differs from the code's default
    (keys in ``NO_OUTPUT_KEYS`` left out)."""
    from models.common.params import SECTIONS, parse_section

    out: dict[str, dict] = {}
    for name, cls in SECTIONS.items():
        if name not in params:
            continue
        current = dataclasses.asdict(parse_section(name, dict(params[name] or {})))
        default = dataclasses.asdict(cls())
        diff = {k: (v, default[k]) for k, v in current.items()
                if v != default[k] and f"{name}.{k}" not in NO_OUTPUT_KEYS}
        if diff:
            out[name] = diff
    return out


def wall_times(reports: Path) -> dict:
    """``{stage: seconds}`` from the last budget run (``benchmarks/bench_budget.py`` writes ``reports/budget.json``;
    the stages themselves record no time, since their outputs must be the same bytes on every run)."""
    path = reports / "budget.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    return {"_measured": data.get("measured", "date unknown"),
            **{r["stage"]: float(r["seconds"]) for r in data.get("stages", [])}}


def timing_paragraph(times: dict, stages: tuple[str, ...]) -> Paragraph:
    known = [f"`{s}` {times[s]:.0f} s" for s in stages if s in times]
    if not known:
        return Paragraph("Wall time: not measured (run `python -m benchmarks.bench_budget`).")
    return Paragraph(f"Wall time: {', '.join(known)} (last budget run: {times['_measured']}).")


def params_paragraph(changed: dict, sections: tuple[str, ...]) -> Paragraph:
    items = [f"`{s}.{k}` = `{v!r}` (default `{d!r}`)" for s in sections for k, (v, d) in changed.get(s, {}).items()]
    return Paragraph("Params that differ from the defaults: " + ("; ".join(items) if items else "none") + ".")


def intro(title: str, changed: dict, sections: tuple[str, ...], times: dict, stages: tuple[str, ...]) -> list:
    """A part's heading, its changed params and its stages' wall times."""
    return [Heading(title), params_paragraph(changed, sections), timing_paragraph(times, stages)]


def data_section(reports: Path, changed: dict, times: dict) -> list:
    world = read_json(reports / "synth_world.json")
    cache = read_json(reports / "gt_cache.json")
    details = read_json(reports / "gt_cache_details.json")
    rows = [["scenes", fmt(world["scenes"])], ["key-frame samples", fmt(world["samples"])],
            ["annotations", fmt(world["annotations"])], ["GT cache: train samples", fmt(cache["train_samples"])],
            ["GT cache: val samples", fmt(cache["val_samples"])]]
    for split in ("train", "val"):
        per_class = (details.get(split) or {}).get("map_elements_per_sample")
        if isinstance(per_class, dict):
            rows.append([f"map elements per {split} sample",
                         ", ".join(f"{k} {fmt(v, 3)}" for k, v in per_class.items())])
    return [*intro("Data: synthetic world and GT cache", changed, ("data", "synth", "cache"), times,
                  ("synth_world", "gt_cache")),
            Table(["what", "count"], rows),
            Figures(figures(reports / "synth_world", ["town_boston-seaport.png", "cameras.png"]),
                    "The procedurally generated town (one location) and the six cameras of one key frame.")]


def tracks_section(reports: Path, changed: dict, times: dict) -> list:
    m = read_json(reports / "tracks.json")
    d = read_json(reports / "tracks_details.json")
    val = d.get("val", {})
    blocks = [*intro("Point tracks", changed, ("tracks",), times,
                  ("tracks",)),
              Paragraph(f"Backend `{d.get('backend')}`, truth: {d.get('truth')}; val: {fmt(val.get('clips', 0))} "
                        f"clips, {fmt(val.get('frames', 0))} frames, {fmt(val.get('points', 0))} query points.")]
    if "tracker" in m:
        blocks.append(Table(["predictor", "AJ", "δavg", "OA"],
                            [[name, fmt(m[key]["aj"]), fmt(m[key]["delta_avg"]), fmt(m[key]["oa"])]
                             for name, key in (("tracker", "tracker"), ("points that never move", "static"))],
                            "TAP-Vid metrics on val against the exact tracks (higher is better)."))
        ok = m["tracker"]["aj"] > m["static"]["aj"]
        blocks.append(Verdicts([(ok, f"the tracker {'beats' if ok else 'does not beat'} points that never move on "
                                     f"AJ ({fmt(m['tracker']['aj'], 3)} vs {fmt(m['static']['aj'], 3)})")]))
    return blocks


TOKENIZER_ROWS = (("tokenizer", "model"), ("zero motion", "zero_motion"), ("affine flow per step", "affine_flow"),
                  ("mean velocity per point", "mean_velocity"), ("perfect labels (ceiling)", "perfect_labels"))
# the issue-15 targets: the share of the way from zero motion to the ceiling the tokenizer must cover
TOKENIZER_TARGETS = (("delta_auc", "δ-AUC", 0.5), ("mse", "MSE", 2 / 3))


def tokenizer_section(reports: Path, changed: dict, times: dict) -> list:
    m = read_json(reports / "tokenizer" / "metrics.json")
    d = read_json(reports / "tokenizer" / "details.json")
    rows, visible, share = d["rows"], d["rows_visible"], d["share"]
    keys = (("mse", "MSE ↓"), ("normalized_accuracy", "normalised accuracy ↑"), ("delta_auc", "δ-AUC ↑"))
    pct = lambda x: f"{100 * x + 0.0:.1f} %" if abs(x) >= 5e-4 else "0.0 %"  # noqa: E731 (no "-0.0 %")
    table = Table(["predictor", *(label for _, label in keys), "way to ceiling: MSE", "δ-AUC",
                   "visible points: MSE", "δ-AUC"],
                  [[name, *(fmt(rows[r][k]) for k, _ in keys),
                    pct(share["all_steps"][r]["mse"]), pct(share["all_steps"][r]["delta_auc"]),
                    pct(share["visible_steps"][r]["mse"]), pct(share["visible_steps"][r]["delta_auc"])]
                   for name, r in TOKENIZER_ROWS if r in rows],
                  f"{fmt(d['windows'])} val windows; {fmt(m['model']['codes'])} codebook entries used, "
                  f"{fmt(d['codebook']['tokens_per_window'])} tokens per window. 'Way to ceiling' is "
                  "(row − zero motion) / (ceiling − zero motion) over all steps (the official metrics) and over "
                  f"visible points only ({pct(d['visible_point_share'])} of them; a lost track is frozen in place). "
                  "Affine flow and mean velocity are no-learning references fitted to the whole true window.")
    verdicts = []
    for k, label in keys:
        lower = k in d.get("lower_is_better", [])
        beats = rows["model"][k] < rows["zero_motion"][k] if lower else rows["model"][k] > rows["zero_motion"][k]
        verdicts.append((beats, f"{label.split()[0]}: the tokenizer {'beats' if beats else 'does not beat'} zero "
                                "motion"))
    for k, label, target in TOKENIZER_TARGETS:
        got, seen = share["all_steps"]["model"][k], share["visible_steps"]["model"][k]
        verdicts.append((got >= target, f"{label}: the tokenizer covers {pct(got)} of the way from zero motion to "
                                        f"the ceiling ({pct(seen)} on visible points); target {pct(target)}"))
    return [*intro("Motion tokenizer (AMPLIFY)", changed, ("tokenizer",), times,
                  ("train_tokenizer", "report_tokenizer")), table,
            Verdicts(verdicts),
            Figures(figures(reports / "tokenizer" / "figures", ["tracks_0.png", "gap_to_ceiling.png"]),
                    "Tracks (green) and their reconstruction through the codebook (magenta); each predictor's share "
                    "of the way from zero motion to the perfect-label ceiling.")]


def planner_section(reports: Path, changed: dict, times: dict) -> list:
    m = read_json(reports / "planner" / "metrics.json")
    d = read_json(reports / "planner" / "details.json")
    names = (("planner", "ViT planner V2"), ("planner_fixed_image", "ViT planner V2, one fixed image"),
             ("ego_mlp", "Ego-MLP"), ("constant_velocity", "constant velocity"),
             ("constant_turn_rate", "constant turn rate"))
    table = Table(["model", "L2 avg (UniAD) m", "collision avg (UniAD) %", "L2 avg (ST-P3) m",
                   "collision avg (ST-P3) %"],
                  [[label, fmt(m[k]["uniad"]["l2_avg"]), fmt(m[k]["uniad"]["col_avg"]), fmt(m[k]["stp3"]["l2_avg"]),
                    fmt(m[k]["stp3"]["col_avg"])] for k, label in names if k in m],
                  f"{fmt(d.get('samples', 0))} val samples; lower is better; the two conventions are never ranked "
                  "together.")
    beats = d.get("beats_constant_velocity", {}).get("planner", {})
    both = bool(beats.get("uniad")) and bool(beats.get("stp3"))
    verdicts = [(both, f"the planner {'beats' if both else 'does not beat'} constant velocity on L2 under both "
                       "conventions")]
    better = m["planner"]["stp3"]["l2_avg"] < m["ego_mlp"]["stp3"]["l2_avg"]
    verdicts.append((better, f"the planner {'beats' if better else 'does not beat'} the Ego-MLP (ego status only) on "
                             f"ST-P3 L2 ({fmt(m['planner']['stp3']['l2_avg'], 3)} vs "
                             f"{fmt(m['ego_mlp']['stp3']['l2_avg'], 3)} m)"))
    cost = d.get("image_ablation_l2_cost")
    if cost:
        uses = min(cost.values()) > 0.01
        verdicts.append((uses, f"the planner {'uses' if uses else 'barely uses'} its images: one fixed image instead "
                               f"costs {fmt(cost['uniad'], 2)} m of UniAD L2 and {fmt(cost['stp3'], 2)} m of ST-P3 L2"))
    pngs = sorted(p.name for p in (reports / "planner" / "figures").glob("*.png"))[:2]
    return [*intro("Planner (ViT planner V2)", changed, ("planner",), times,
                  ("train_planner", "report_planner")), table, Verdicts(verdicts),
            Figures(figures(reports / "planner" / "figures", pngs),
                    "Validation samples: bird's-eye view of the planned, true and baseline trajectories.")]


def geometry_section(reports: Path, changed: dict, times: dict) -> list:
    conv = read_json(reports / "convert_weights.json")
    m = read_json(reports / "geometry" / "metrics.json")
    d = read_json(reports / "geometry" / "details.json")
    keys = (("depth_abs_rel", "AbsRel ↓"), ("depth_delta1", "δ<1.25 ↑"),
            ("depth_median_abs_rel", "AbsRel med-aligned ↓"),
            ("auc30", "AUC@30 ↑"), ("rra15", "RRA@15 ↑"), ("ate_m", "ATE m ↓"), ("mask_iou", "mask IoU ↑"))
    table = Table(["predictor"] + [label for _, label in keys],
                  [[label, *(fmt(m[k][key]) if key in m[k] else "–" for key, _ in keys)]
                   for k, label in (("model", "trained model"), ("init", "converted init"),
                                    ("baseline", "trivial baseline"))],
                  f"{fmt(d['windows'])} val windows of {d['frames']} frames x {len(d['cameras'])} cameras; truth: "
                  f"{d['truth']}.")
    random = conv.get("random_sources", 0)
    notes = (f"Converted from Pi3 + PAGE-4D: {fmt(conv['tensors']['total'])} tensors "
             f"({fmt(conv['tensors']['pi3'])} Pi3, {fmt(conv['tensors']['page4d'])} PAGE-4D, "
             f"{fmt(conv['tensors']['fresh'])} new)"
             + (f"; **{random} source checkpoint(s) were seeded random tensors** in the real layouts." if random
                else "; real source checkpoints."))
    model, init, base = m["model"], m["init"], m["baseline"]
    depth = model["depth_abs_rel"] < min(init["depth_abs_rel"], base["depth_abs_rel"])
    pose = model["auc30"] > max(init["auc30"], base["auc30"])
    verdicts = [(depth, f"depth AbsRel: the trained model {'beats' if depth else 'does not beat'} both the converted "
                        "init and the baseline"),
                (pose, f"pose AUC@30: the trained model {'beats' if pose else 'does not beat'} both the converted "
                       "init and the baseline")]
    if "mask_iou" in model and "mask_iou" in init:
        above = model["mask_iou"] > init["mask_iou"]
        verdicts.append((above, f"dynamic-mask IoU {'above' if above else 'not above'} the converted init's"))
    return [*intro("Temporal multi-view geometry", changed, ("geometry", "convert", "train_geometry"), times,
                  ("convert_weights", "train_geometry", "report_geometry")),
            Paragraph(notes), table, Verdicts(verdicts),
            Figures(figures(reports / "geometry" / "figures", ["window_000.png"]),
                    "A validation window: images with the predicted mask, predicted and true depth, the error, "
                    "and the camera centres from above.", width_percent=70)]


def mapdet_section(reports: Path, changed: dict, times: dict) -> list:
    m = read_json(reports / "mapdet" / "metrics.json")
    d = read_json(reports / "mapdet" / "details.json")
    classes = d["classes"]
    table = Table(["predictor", "mAP", *(f"{c} AP" for c in classes), "mAP@0.5m", "mAP@1.0m", "mAP@1.5m"],
                  [[label, fmt(m[k]["mAP"]), *(fmt(m[k][f"{c}_AP"]) for c in classes), fmt(m[k]["mAP_0.5m"]),
                    fmt(m[k]["mAP_1.0m"]), fmt(m[k]["mAP_1.5m"])]
                   for k, label in (("model", "map detector"), ("baseline", "mean training layout"))],
                  f"MapTR Chamfer AP (0 to 1) on {fmt(d['samples'])} val samples.")
    random = bool(m.get("mapdet_random_sources"))
    better = m["model"]["mAP"] > m["baseline"]["mAP"]
    weights = ("**seeded random tensors in the real layouts** (no real checkpoint given)." if random
               else "real checkpoints.")
    verdict = (f"the detector {'beats' if better else 'does not beat'} the mean training layout on mAP "
               f"({fmt(m['model']['mAP'], 3)} vs {fmt(m['baseline']['mAP'], 3)})")
    return [*intro("Map detection (Q-Former + frozen language model)", changed, ("mapdet",), times,
                  ("train_mapdet", "report_mapdet")),
            Paragraph("BLIP-2 and language-model weights: " + weights), table, Verdicts([(better, verdict)]),
            Figures(figures(reports / "mapdet" / "figures", ["sample_000.png"]),
                    "A validation sample: the six cameras above the bird's-eye view of GT (thick) and predictions "
                    "(dashed).", width_percent=60)]


SECTIONS = (data_section, tracks_section, tokenizer_section, planner_section, geometry_section, mapdet_section)
