"""The Grafana dashboard in ``dashboards/`` against what Ray really exports: a real tiny sweep (four Ray
Train trials, one unreadable video; conftest's ``grid_sweep``) on the session's Ray, whose Prometheus
endpoint is then scraped for every metric the dashboard queries, with every label its panels group by
or filter on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


DASHBOARD = Path(__file__).parent.parent / "dashboards" / "beray_grafana_dashboard.json"


def _queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets (rows included) and template-variable queries."""
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _needs(expr: str) -> dict[str, set[str]]:
    """metric -> labels the expression needs on it: matchers, ``by (...)``, ``label_values(m, label)``."""
    needs: dict[str, set[str]] = {}
    by = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
    for metric, matchers in re.findall(r"(ray_[a-z_]+)(?:\{([^}]*)\})?", expr):
        labels = set(re.findall(r"(\w+)\s*=~?", matchers or "")) | by
        needs.setdefault(metric, set()).update(labels)
    if m := re.match(r"label_values\((\w+).*,\s*(\w+)\)$", expr):
        needs[m.group(1)].add(m.group(2))
    return needs


def _series(text: str) -> dict[str, list[set[str]]]:
    """Prometheus exposition text -> metric -> the label names of each of its series."""
    out: dict[str, list[set[str]]] = {}
    for line in text.splitlines():
        if m := re.match(r"(\w+)\{(.*)\} ", line):
            out.setdefault(m.group(1), []).append(set(re.findall(r'(\w+)="', m.group(2))))
    return out


def test_the_dashboard_is_a_grafana_dashboard_of_ray_s_datasource():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 27
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])  # Grafana refuses duplicate ids
    assert all(p["datasource"] == "${datasource}" and p["targets"] for p in panels)
    assert {v["name"] for v in d["templating"]["list"]} >= {"datasource", "SessionName", "Run", "Sweep"}
    metrics = set().union(*map(_needs, _queries(d)))
    assert {"ray_beray_clips_per_s", "ray_beray_data_wait_fraction", "ray_beray_step_time_s", "ray_beray_loss",
            "ray_beray_skipped_videos_total", "ray_beray_sweep_trials"} <= metrics


@pytest.mark.timeout(600)  # the first test to ask runs the shared 4-trial sweep: 170 s on a slow machine
def test_every_metric_the_dashboard_queries_is_exported_with_its_labels(ray_cluster, grid_sweep):
    assert grid_sweep["code"] == 0, grid_sweep["err"][-3000:]  # 4 trials, one unreadable training video
    trial_ids = [json.loads(p.read_text())["trial_id"] for p in (grid_sweep["results"] / "trials").glob("*.json")]
    assert len(trial_ids) == 4

    needs: dict[str, set[str]] = {}
    for expr in _queries(json.loads(DASHBOARD.read_text())):
        for metric, labels in _needs(expr).items():
            needs.setdefault(metric, set()).update(labels)
    seen: dict[str, list[set[str]]] = {}
    for text in grid_sweep["scrapes"]:
        for metric, label_sets in _series(text).items():
            seen.setdefault(metric, []).extend(label_sets)
    missing = {m: labels for m, labels in needs.items() if not any(labels <= s for s in seen.get(m, []))}
    assert not missing, f"not exported (metric: labels the dashboard needs): {missing}"

    def trials(text: str) -> dict[str, float]:
        return {m.group(1): float(m.group(2)) for m in
                re.finditer(r'ray_beray_sweep_trials\{[^}]*state="(\w+)",sweep="grid"\} (\S+)', text)}

    counts = [trials(t) for t in grid_sweep["scrapes"] if trials(t)]
    assert counts[-1] == {"pending": 0, "running": 0, "finished": 4, "stopped": 0, "failed": 0}  # the last count
    assert any(c["running"] >= 1 for c in counts)  # and the panel saw them run
    last = grid_sweep["scrapes"][-1]
    for trial in {t.split("/")[0] for t in trial_ids}:  # every job (TRIAL of TRIAL/MEMBER) skipped the cut video
        skipped = [float(v) for v in re.findall(rf'ray_beray_skipped_videos_total\{{[^}}]*run="{trial}"'
                                                r"[^}]*\} (\S+)", last)]
        assert skipped and sum(skipped) >= 1, trial
