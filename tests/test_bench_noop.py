"""The no-op benchmark's parts: the layout it compares against, and DVC's floor repository."""
from __future__ import annotations

from benchmarks.bench_noop import build_floor_repo, exact_section_layout, up_to_date


def test_a_section_is_listed_whole_only_where_every_content_key_is_listed():
    params = {"a": {"x": 1, "y": 2, "workers": 4}, "b": {"u": 1, "v": 2}}
    stages = {"train": {"params": ["a.x", "a.y", "b.u"]}, "report": {"params": ["a.x", "b.u", "b.v"]},
              "none": {}}
    layout = exact_section_layout(stages, params, no_output_keys={"a.workers"})
    assert layout == {"train": ["a", "b.u"], "report": ["a.x", "b"], "none": []}


def test_the_floor_repository_is_up_to_date_and_its_stages_track_their_params(tmp_path):
    repo = build_floor_repo(tmp_path / "floor", stages=3)
    assert up_to_date(repo)
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("s1:\n  value: 1", "s1:\n  value: 7"))
    assert not up_to_date(repo)
