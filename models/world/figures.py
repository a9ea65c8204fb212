"""Pictures of a written world, for people: town maps with the ego routes, a six-camera key frame,
and exact point tracks drawn over CAM_FRONT. Read back from the dataroot (tables, maps, extras), so
they also show that the files agree with each other. PNG only (deterministic bytes)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import PathPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402
from PIL import Image  # noqa: E402

from models.world.sensors import CAMERA_ORDER  # noqa: E402

plt.rcParams["svg.hashsalt"] = "0"


def write_figures(dataroot: Path, version: str, out_dir: Path) -> list[Path]:
    dataroot, out_dir = Path(dataroot), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {n: json.loads((dataroot / version / f"{n}.json").read_text())
              for n in ("scene", "sample", "sample_data", "ego_pose", "log")}
    written = []
    for loc in sorted({log["location"] for log in tables["log"]}):
        written.append(_town_map(dataroot, loc, tables, out_dir / f"town_{loc}.png"))
    written.append(_camera_mosaic(dataroot, tables, out_dir / "cameras.png"))
    written.append(_tracks(dataroot, tables, out_dir / "tracks.png"))
    return written


def _polygon_patch(nodes: dict, rec: dict, **kw) -> PathPatch:
    """A matplotlib patch from a map-expansion polygon (no descartes: it breaks on shapely 2)."""
    rings = [rec["exterior_node_tokens"]] + [h["node_tokens"] for h in rec["holes"]]
    verts, codes = [], []
    for ring in rings:
        pts = [nodes[t] for t in ring]
        verts += pts + [pts[0]]
        codes += [MplPath.MOVETO] + [MplPath.LINETO] * (len(pts) - 1) + [MplPath.CLOSEPOLY]
    return PathPatch(MplPath(verts, codes), **kw)


def _scene_ego_xy(tables: dict, scene: dict) -> np.ndarray:
    pose = {p["token"]: p for p in tables["ego_pose"]}
    lidar = {sd["sample_token"]: pose[sd["ego_pose_token"]] for sd in tables["sample_data"]
             if sd["is_key_frame"] and sd["filename"].startswith("samples/LIDAR_TOP")}
    samples = {s["token"]: s for s in tables["sample"]}
    xy, tok = [], scene["first_sample_token"]
    while tok:
        xy.append(lidar[tok]["translation"][:2])
        tok = samples[tok]["next"]
    return np.array(xy)


def _town_map(dataroot: Path, location: str, tables: dict, path: Path) -> Path:
    m = json.loads((dataroot / "maps" / "expansion" / f"{location}.json").read_text())
    nodes = {n["token"]: (n["x"], n["y"]) for n in m["node"]}
    polys = {p["token"]: p for p in m["polygon"]}
    lines = {ln["token"]: ln for ln in m["line"]}
    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    for layer, colour in (("walkway", "#c9c7c0"), ("road_segment", "#55575c"), ("carpark_area", "#6a6c70"),
                          ("ped_crossing", "#e8e8e0")):
        for rec in m[layer]:
            ax.add_patch(_polygon_patch(nodes, polys[rec["polygon_token"]], facecolor=colour, edgecolor="none"))
    for layer, colour, lw in (("lane_divider", "white", 0.5), ("road_divider", "#dcb428", 0.9)):
        for rec in m[layer]:
            pts = np.array([nodes[t] for t in lines[rec["line_token"]]["node_tokens"]])
            ax.plot(pts[:, 0], pts[:, 1], color=colour, lw=lw)
    logs = {log["token"] for log in tables["log"] if log["location"] == location}
    cmap = plt.get_cmap("tab10")
    for k, scene in enumerate(s for s in tables["scene"] if s["log_token"] in logs):
        xy = _scene_ego_xy(tables, scene)
        ax.plot(xy[:, 0], xy[:, 1], "-", color=cmap(k % 10), lw=2.0, label=scene["name"])
        ax.plot(xy[0, 0], xy[0, 1], "o", color=cmap(k % 10), ms=5)
    xs = np.array(list(nodes.values()))
    ax.set_xlim(xs[:, 0].min() - 10, xs[:, 0].max() + 10)
    ax.set_ylim(xs[:, 1].min() - 10, xs[:, 1].max() + 10)
    ax.set_aspect("equal")
    ax.set_facecolor("#4a6834")
    ax.set_title(f"{location}: map expansion and ego routes (dot = scene start)")
    ax.set_xlabel("x east [m]")
    ax.set_ylabel("y north [m]")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def _camera_mosaic(dataroot: Path, tables: dict, path: Path) -> Path:
    scene = tables["scene"][0]
    samples = {s["token"]: s for s in tables["sample"]}
    tok = scene["first_sample_token"]
    for _ in range(scene["nbr_samples"] // 2):
        tok = samples[tok]["next"] or tok
    files = {}
    for sd in tables["sample_data"]:
        if sd["sample_token"] == tok and sd["is_key_frame"] and sd["fileformat"] == "jpg":
            files[sd["filename"].split("/")[1]] = dataroot / sd["filename"]
    order = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
    assert set(order) == set(CAMERA_ORDER)
    ims = [np.asarray(Image.open(files[c]).convert("RGB")) for c in order]
    mosaic = np.concatenate([np.concatenate(ims[:3], 1), np.concatenate(ims[3:], 1)], 0)
    Image.fromarray(mosaic).save(path, format="PNG")
    return path


def _tracks(dataroot: Path, tables: dict, path: Path) -> Path:
    manifest = json.loads((dataroot / "extras" / "manifest.json").read_text())
    name = tables["scene"][0]["name"]
    extra = manifest["scenes"][name]
    truth = np.load(dataroot / extra["file"])
    uv, vis = truth["track_uv"], truth["track_visible"]  # (S, T, Q, 2), (S, T, Q)
    s = len(uv) // 2
    frame = int(truth["track_query_frame"][s])
    sd = {x["token"]: x for x in tables["sample_data"]}[extra["sweep_tokens"][frame]]
    img = np.asarray(Image.open(dataroot / sd["filename"]).convert("RGB"))
    h, w = img.shape[:2]
    fig, ax = plt.subplots(figsize=(w / 40, h / 40), dpi=100)
    ax.imshow(img)
    cmap = plt.get_cmap("turbo")
    for q in range(uv.shape[2]):
        ok = vis[s, :, q]
        if ok.sum() < 2:
            continue
        ax.plot(uv[s, ok, q, 0], uv[s, ok, q, 1], "-", color=cmap(q / uv.shape[2]), lw=1.0)
        ax.plot(uv[s, 0, q, 0], uv[s, 0, q, 1], "o", color=cmap(q / uv.shape[2]), ms=2)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(f"{name}: exact tracks of a {int(np.sqrt(uv.shape[2]))}^2 grid over {uv.shape[1]} sweeps "
                 f"(visible steps only)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
