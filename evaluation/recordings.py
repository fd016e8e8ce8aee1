"""Sound queries with recordings the model never heard: does a user's own recording of a dog find dog pictures?

realsound's clips carry Tux Paint's recordings; `evaluation/data/second_source.csv` maps recordings from other
Debian packages (GCompris, Widelands, 0 A.D.: see evaluation/data/README.md) to the same 16 classes. Each mapped
recording found under `source` (the folder the packages were `dpkg -x`-ed into) is one `Engine.search_audio`
query; a hit counts when its label is the recording's class. Recordings that are missing or do not decode are
skipped and listed, so a partly extracted set of packages still gives a report.
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jsa_retrieval.errors import JsarError
from jsa_retrieval.files import write_atomically

from .archive_members import MemberMissing, member_file, split_member

COLUMNS = ("package", "version", "path", "class", "note")
SECOND_SOURCE = Path(__file__).with_name("data") / "second_source.csv"  # GCompris, Widelands, 0 A.D. -> 13 classes
HOW_TO_GET = ("apt-get download gcompris-qt-data widelands-data 0ad-data && "
              "for f in *.deb; do dpkg -x \"$f\" x2; done, then pass x2 as the source")


class MappingError(JsarError, ValueError):
    """The mapping CSV cannot be read or lacks a column; the message says which."""


class SourceMissing(JsarError, FileNotFoundError):
    """The folder the packages were said to be extracted into is not there."""


@dataclass
class MappedRecording:
    """One row of the mapping: `path` inside the extracted package (ARCHIVE!MEMBER for a member of a .zip/.rcc)."""

    package: str
    version: str
    path: str
    label: str
    note: str = ""


@dataclass
class RecordingResult:
    path: str
    label: str
    hit_labels: list[str | None]  # the labels of the hits, best first
    correct: bool  # the top hit has the recording's class
    precision: float  # share of the hits with the recording's class (P@k; over the hits returned)
    package: str = ""
    note: str = ""


@dataclass
class Skipped:
    path: str
    label: str
    kind: str  # 'missing' | 'unreadable'
    reason: str  # one line


@dataclass
class ClassScore:
    label: str
    n: int
    top1: float
    precision: float


@dataclass
class RecordingsReport:
    mapping: str
    source: str
    k: int
    index_classes: list[str]  # the labels the index holds; chance is 1 / their number
    results: list[RecordingResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.index_classes) if self.index_classes else 0.0

    @property
    def top1(self) -> float:
        """Top-1 accuracy over all recordings queried."""
        return _mean([float(r.correct) for r in self.results])

    @property
    def precision(self) -> float:
        """P@k over all recordings queried."""
        return _mean([r.precision for r in self.results])

    def by_class(self) -> list[ClassScore]:
        """Per-class means, classes in name order."""
        groups: dict[str, list[RecordingResult]] = defaultdict(list)
        for result in self.results:
            groups[result.label].append(result)
        return [ClassScore(label, len(group), _mean([float(r.correct) for r in group]),
                           _mean([r.precision for r in group])) for label, group in sorted(groups.items())]

    @property
    def class_top1(self) -> float:
        """Top-1 averaged over classes, so a class with many recordings does not dominate."""
        return _mean([score.top1 for score in self.by_class()])

    @property
    def class_precision(self) -> float:
        return _mean([score.precision for score in self.by_class()])

    def unknown_classes(self) -> list[str]:
        """Mapped classes the index has no clip of: their recordings cannot be right."""
        return sorted({r.label for r in self.results} - set(self.index_classes))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "recordings", "mapping": self.mapping, "source": self.source, "k": self.k,
                "index_classes": list(self.index_classes), "chance": self.chance, "n": len(self.results),
                "n_skipped": len(self.skipped), "top1": self.top1, "precision_at_k": self.precision,
                "class_top1": self.class_top1, "class_precision_at_k": self.class_precision,
                "unknown_classes": self.unknown_classes(),
                "by_class": [asdict(score) for score in self.by_class()],
                "results": [asdict(result) for result in self.results],
                "skipped": [asdict(skip) for skip in self.skipped]}

    def to_markdown(self) -> str:
        pct = lambda value: f"{100 * value:.1f}"  # noqa: E731
        lines = ["# Sound queries with unseen recordings", "",
                 f"- mapping: {self.mapping}", f"- source: {self.source}",
                 f"- {len(self.results)} recordings queried, {len(self.skipped)} skipped; k = {self.k}; "
                 f"{len(self.index_classes)} classes in the index, chance top-1 {pct(self.chance)} %", "",
                 f"| class | n | top-1 % | P@{self.k} % |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {s.label} | {s.n} | {pct(s.top1)} | {pct(s.precision)} |" for s in self.by_class()]
        lines += [f"| all recordings | {len(self.results)} | {pct(self.top1)} | {pct(self.precision)} |",
                  f"| mean of classes | {len(self.by_class())} | {pct(self.class_top1)} | "
                  f"{pct(self.class_precision)} |"]
        if self.unknown_classes():
            lines += ["", f"Classes the index has no clip of: {', '.join(self.unknown_classes())}."]
        if self.skipped:
            lines += ["", "## Skipped", ""] + [f"- {s.path} ({s.kind}): {s.reason}" for s in self.skipped]
        return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def read_mapping(mapping_csv: Path) -> list[MappedRecording]:
    """The rows of a mapping CSV with columns package,version,path,class,note."""
    try:
        with open(mapping_csv, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in COLUMNS if name not in (reader.fieldnames or [])]
            if missing:
                raise MappingError(f"{mapping_csv}: no column {', '.join(missing)} (needs {','.join(COLUMNS)})")
            return [MappedRecording(row["package"], row["version"], row["path"], row["class"], row["note"] or "")
                    for row in reader if row["path"]]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MappingError(f"{mapping_csv}: cannot read mapping ({' '.join(str(error).split())})") from None


def index_classes(engine) -> list[str]:
    """The distinct non-empty labels of the engine's store."""
    return sorted({label for label in engine.indexes.store.labels() if label})


def evaluate_recordings(engine, mapping_csv: Path, source: Path, k: int = 10,
                        out_dir: Path | None = None) -> RecordingsReport:
    """Query `engine` with every mapped recording under `source`; score its top-1 and P@k by the hits' labels.
    With `out_dir`, also write recordings.json and recordings.md there (atomically)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    source = Path(source)
    if not source.is_dir():
        raise SourceMissing(f"{source} is not a folder: {HOW_TO_GET}")
    report = RecordingsReport(str(mapping_csv), str(source), k, index_classes(engine))
    for row in read_mapping(Path(mapping_csv)):
        if not (source / split_member(row.path)[0]).is_file():
            report.skipped.append(Skipped(row.path, row.label, "missing", f"not under {source}"))
            continue
        try:
            with member_file(source, row.path) as path:
                hits = engine.search_audio(path, k=k).hits
        except MemberMissing as error:
            report.skipped.append(Skipped(row.path, row.label, "missing", str(error)))
            continue
        except (JsarError, OSError, ValueError, RuntimeError) as error:  # DecodeError, ArchiveError, ...
            report.skipped.append(Skipped(row.path, row.label, "unreadable", " ".join(str(error).split())))
            continue
        labels = [hit.label for hit in hits]
        report.results.append(RecordingResult(
            row.path, row.label, labels, bool(labels) and labels[0] == row.label,
            sum(label == row.label for label in labels) / len(labels) if labels else 0.0, row.package, row.note))
    if out_dir is not None:
        write_recordings(report, Path(out_dir))
    return report


def write_recordings(report: RecordingsReport, out_dir: Path) -> dict[str, Path]:
    """recordings.json (with provenance: jsar version, commit, date) and recordings.md, each written atomically."""
    from .reports import provenance  # pandas and matplotlib come with it: only when a report is written

    text = json.dumps({"meta": provenance("recordings"), **report.to_dict()}, indent=2, allow_nan=False)
    return {"json": write_atomically(Path(out_dir) / "recordings.json", lambda h: h.write(text.encode() + b"\n")),
            "markdown": write_atomically(Path(out_dir) / "recordings.md",
                                         lambda h: h.write(report.to_markdown().encode("utf-8")))}
