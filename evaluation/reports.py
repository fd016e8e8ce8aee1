"""Report directories (report.md + report.csv + report.json [+ PNG figures]) and side-by-side comparisons.

Tables follow the papers' layout: localization rows are the refinement columns (plain, +IQR, +OGL,
+IQR+OGL) with "cIoU" = AP50 and AUC first; retrieval is one row of A→I and I→A Recall@1/5/10. The markdown
prints percentages with one decimal as the papers do; CSV and JSON keep the raw fractions. Every report
names what produced it (jsar version, git commit, date, model, config) and how it was measured (threshold
and upsampling modes, IQR alpha, OGL, number of items), because these change the numbers.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import jsa_retrieval
from jsa_retrieval import pictures

from .localization import COLUMNS

CONFIGURATION_HEADING = "## Configuration"  # report.md's last section, the run's configuration as JSON

ARROWS = {"audio_to_image": "A→I", "image_to_audio": "I→A"}
LOCALIZATION_METRICS = (  # (key in ColumnScores, table heading)
    ("ap50", "cIoU (AP50)"), ("auc", "AUC"), ("mean_ciou", "mean cIoU"), ("pointing_game", "pointing game"),
    ("miou", "mIoU"), ("f_score", "F-score"), ("f_score_binary", "F (binary)"),
    ("negatives_ap", "AP, with negatives"), ("negatives_max_f1", "max-F1, with negatives"),  # SLAVC's protocol
)


@dataclass
class ComparisonReport:
    """Several checkpoints on the same clips: one row per run (see `scoring.compare_runs`)."""

    data_dir: str
    layout: str
    split: str | None
    threshold: str
    upsample_mode: str
    eval_size: int
    ogl: str | None
    ks: tuple[int, ...]
    n_clips: int
    n_with_ground_truth: int
    n_labelled: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    kind = "comparison"

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in (
            "data_dir", "layout", "split", "threshold", "upsample_mode", "eval_size", "ogl", "n_clips",
            "n_with_ground_truth", "n_labelled", "runs")}
        values["kind"] = self.kind
        values["ks"] = list(self.ks)
        return values


# --------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------

def git_commit() -> str | None:
    """Short commit hash of the jsar checkout, or None (not a git checkout, no commits, no git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(jsa_retrieval.__file__).parent,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def provenance(title: str) -> dict[str, Any]:
    """What made a report: title, jsar version, git commit, UTC date."""
    return {"title": title, "jsar_version": jsa_retrieval.__version__, "git_commit": git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------

def _recall_value(recall: dict[Any, float] | None, k: int) -> float | None:
    if not recall:
        return None
    value = recall.get(k, recall.get(str(k)))
    return None if value is None else float(value)


def localization_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per refinement column: cIoU (AP50), AUC, mean cIoU, pointing game [, mIoU, F-score, F (binary)]
    [, AP and max-F1 with negatives (SLAVC's protocol, `--negatives`)]."""
    rows = []
    has_masks = any(scores.get("n_masks") for scores in report["columns"].values())
    has_negatives = any(scores.get("n_negatives") for scores in report["columns"].values())
    for name, scores in report["columns"].items():
        row: dict[str, Any] = {"column": name}
        for key, heading in LOCALIZATION_METRICS:
            if key in ("miou", "f_score", "f_score_binary") and not has_masks:
                continue
            if key.startswith("negatives_") and not has_negatives:
                continue
            row[heading] = scores.get(key)
        row["n"] = scores["n"]
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(report: dict[str, Any]) -> pd.DataFrame | None:
    """One row per (group value, column) of a localization report made with --group-by, plus the overall rows."""
    if not report.get("groups"):
        return None
    rows = []
    for group, columns in [("all", report["columns"]), *report["groups"].items()]:
        for name, scores in columns.items():
            rows.append({report["group_by"]: group, "column": name, "cIoU (AP50)": scores["ap50"],
                         "AUC": scores["auc"], "mean cIoU": scores["mean_ciou"],
                         "pointing": scores["pointing_game"], "n": scores["n"]})
    return pd.DataFrame(rows)


def retrieval_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row: A→I R@1/5/10 and I→A R@1/5/10 (through the index), with the number of queries."""
    row: dict[str, Any] = {"model": report["model_name"], "n": report["n_evaluated"]}
    for direction, arrow in ARROWS.items():
        for k in report["ks"]:
            row[f"{arrow} R@{k}"] = _recall_value(report["directions"][direction]["recall"], k)
    return pd.DataFrame([row])


def exact_table(report: dict[str, Any]) -> pd.DataFrame | None:
    """Index vs exact ranking: exact recall, hit agreement and recall difference per direction and K."""
    if not report.get("exact"):
        return None
    rows = []
    for direction, check in report["exact"].items():
        for k in report["ks"]:
            rows.append({"direction": ARROWS[direction], "K": k,
                         "index recall": _recall_value(report["directions"][direction]["recall"], k),
                         "exact recall": _recall_value(check["recall"], k),
                         "hit agreement": _recall_value(check["hit_agreement"], k),
                         "recall difference": _recall_value(check["recall_difference"], k)})
    return pd.DataFrame(rows)


def category_table(report: dict[str, Any]) -> pd.DataFrame:
    """Recall@K per query class, both directions side by side."""
    a2i = report["directions"]["audio_to_image"]["by_category"]
    i2a = report["directions"]["image_to_audio"]["by_category"]
    rows = []
    for label in sorted(set(a2i) | set(i2a)):
        row: dict[str, Any] = {"category": label}
        for direction, values in (("audio_to_image", a2i), ("image_to_audio", i2a)):
            for k in report["ks"]:
                row[f"{ARROWS[direction]} R@{k}"] = _recall_value(values.get(label), k)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per checkpoint: model, localization cIoU (AP50) / AUC per column, A→I and I→A Recall@K."""
    present = [column for column in COLUMNS if any(column in run["localization"] for run in report["runs"])]
    rows = []
    for run in report["runs"]:
        row: dict[str, Any] = {"model": run["model_name"],
                               "checkpoint": Path(run["checkpoint"]).name if run["checkpoint"] else "in-memory",
                               "n loc": run["n_localization"]}
        for column in present:
            scores = run["localization"].get(column, {})
            row[f"{column} cIoU"] = scores.get("ap50")
            row[f"{column} AUC"] = scores.get("auc")
        row["n ret"] = run["n_retrieval"]
        for direction, arrow in ARROWS.items():
            for k in report["ks"]:
                row[f"{arrow} R@{k}"] = _recall_value((run["retrieval"] or {}).get(direction), k)
        rows.append(row)
    return pd.DataFrame(rows)


_COUNT_COLUMNS = {"n", "n loc", "n ret", "K"}
_RAW_COLUMNS = {"recall difference", "hit agreement"}


def markdown_table(frame: pd.DataFrame, percent: bool = True) -> str:
    """A GitHub markdown table; fractions print as percentages with one decimal, missing values as '–'."""
    def cell(column: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, (float, np.floating)) and column not in _COUNT_COLUMNS:
            if percent and column not in _RAW_COLUMNS:
                return f"{100.0 * float(value):.1f}"
            return f"{float(value):.4f}"
        return str(value)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(str(c), row[c]) for c in frame.columns) + " |"
            for row in frame.astype(object).to_dict("records")]
    return "\n".join([header, rule, *body])


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------

def _as_dict(report: Any) -> dict[str, Any]:
    values = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    if values.get("kind") not in ("localization", "retrieval", "comparison"):
        raise ValueError("a report must be a LocalizationReport, RetrievalReport, ComparisonReport or their "
                         f"to_dict(); got kind {values.get('kind')!r}")
    return values


def _header_lines(values: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [f"# {meta['title']}", "",
             f"- jsar {meta['jsar_version']}, commit {meta['git_commit'] or 'unknown'}, {meta['date']}"]
    kind = values["kind"]
    if kind == "localization":
        checkpoint = values["checkpoint"] or "in-memory model"
        sha = f" (sha256 prefix {values['checkpoint_sha']})" if values.get("checkpoint_sha") else ""
        lines += [
            f"- model: {values['model_name']}, checkpoint {checkpoint}{sha}, config {values['config'].get('name')}",
            f"- data: {values['data_dir']} ({values['layout']} layout, split {values['split'] or 'all'})",
            f"- evaluated: {values['n_evaluated']} of {values['n_clips']} clips; skipped "
            f"{values['n_skipped_no_gt']} without ground truth, {values['n_skipped_unreadable']} unreadable; "
            f"{values['n_missing_files']} listed clips had missing files",
            f"- threshold: {values['threshold']}; upsampling: {values['upsample_mode']} to "
            f"{values['eval_size']}x{values['eval_size']}, min-max per sample",
            f"- IQR alpha: {values['iqr_alpha'] if values['iqr_alpha'] is not None else 'n/a (no IQR)'}; "
            f"OGL: {values['ogl'] or 'off'}"
            + (f" (fused as normalise({values['ogl_weight']}·av + {1 - values['ogl_weight']:.1f}·obj))"
               if values["ogl"] else ""),
            "- \"cIoU\" is AP50 (fraction of samples with cIoU ≥ 0.5), as the papers report it; numbers in %",
        ]
    elif kind == "retrieval":
        lines += [
            f"- model: {values['model_name']}, checkpoint {values['checkpoint']}, fingerprint "
            f"{values['fingerprint'][:12]}, config {values['config'].get('name')}",
            f"- index: {values['index_dir']} ({json.dumps(values['index'], sort_keys=True, default=str)})",
            f"- evaluated: {values['n_evaluated']} labelled queries per direction in {values['n_categories']} "
            f"classes; gallery {values['gallery_size']} items (own pair included); {values['n_skipped_unlabelled']}"
            " unlabelled item(s) skipped as queries (kept in the gallery, never a hit)",
            "- threshold / upsampling: n/a (retrieval); hit = same class in the top K; numbers in %",
        ]
    else:
        lines += [
            f"- data: {values['data_dir']} ({values['layout']} layout, split {values['split'] or 'all'}); "
            f"{values['n_clips']} clips, {values['n_with_ground_truth']} with ground truth, "
            f"{values['n_labelled']} with a class label",
            f"- threshold: {values['threshold']}; upsampling: {values['upsample_mode']} to "
            f"{values['eval_size']}x{values['eval_size']}; OGL: {values['ogl'] or 'off'}",
            "- retrieval: exact ranking over the same clips' vectors (no index); \"cIoU\" is AP50; numbers in %",
        ]
    return lines


def write_report(report: Any, out_dir: str | Path, title: str, draw_figures: bool = True) -> Path:
    """Write report.md, report.csv and report.json (and PNG figures) for one report into `out_dir`.

    `report` is a LocalizationReport, RetrievalReport or ComparisonReport, or the dict their `to_dict`
    returns (figures need the object: examples are not kept in the dict). Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = _as_dict(report)
    meta = provenance(title)
    lines = _header_lines(values, meta) + [""]
    kind = values["kind"]
    if kind == "localization":
        table = localization_table(values)
        lines += ["## Localization", "", markdown_table(table)]
        groups = group_table(values)
        if groups is not None:
            lines += ["", f"### By {values['group_by']}", "", markdown_table(groups)]
        examples = getattr(report, "examples", None)
        if draw_figures and examples:
            pictures.localization_grid(examples, out_dir / "examples.png")
            lines += ["", "![example localizations](examples.png)"]
    elif kind == "retrieval":
        table = retrieval_table(values)
        lines += ["## Retrieval (class-level Recall@K)", "", markdown_table(table)]
        exact = exact_table(values)
        if exact is not None:
            lines += ["", "### Index vs exact ranking", "", markdown_table(exact)]
        if draw_figures:
            curves = {name: result["curve"] for name, result in values["directions"].items()}
            pictures.recall_curve(curves, out_dir / "recall_at_k.png", title=f"Recall@K ({values['model_name']})")
            lines += ["", "![Recall@K](recall_at_k.png)"]
        lines += ["", "### By category", "", markdown_table(category_table(values))]
    else:
        table = comparison_table(values)
        lines += ["## Runs side by side", "", markdown_table(table)]
    config = values.get("config")
    if config:
        lines += ["", CONFIGURATION_HEADING, "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str),
                  "```"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    table.to_csv(out_dir / "report.csv", index=False)
    (out_dir / "report.json").write_text(json.dumps({"meta": meta, **values}, indent=2, default=_json_default,
                                                    allow_nan=False), encoding="utf-8")
    return out_dir


def report_tables(out_dir: str | Path) -> str:
    """The tables of the report `write_report` wrote in `out_dir`: its report.md without the configuration block,
    as `jsar eval` prints them."""
    return (Path(out_dir) / "report.md").read_text().split(CONFIGURATION_HEADING)[0].rstrip()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
