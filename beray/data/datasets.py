"""Dataset indexes: the official split files of each dataset -> lists of VideoRecord.

Each ``index_*`` function takes the dataset root and a split number and returns a
:class:`DatasetIndex` whose ``subsets`` map a subset name (``train``, ``test``,
...) to records. Where each dataset expects its files is in README.md
("Datasets"). Files named by a split file but missing on disk stay in the index
(reading them raises VideoReadError, so ``check`` names them and training skips
them), except for Kinetics, where missing downloads are normal: those are
dropped and counted in ``missing``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class VideoRecord:
    """One video (or a segment of one) with its label."""

    path: str
    label: int
    class_name: str
    video_id: str
    start_frame: int | None = None  # first frame of the segment
    end_frame: int | None = None  # one past its last frame


@dataclass
class DatasetIndex:
    name: str
    root: str
    subsets: dict[str, list[VideoRecord]]
    classes: list[str]
    missing: list[str] = field(default_factory=list)  # files the split names but the disk lacks (Kinetics)

    @property
    def num_classes(self) -> int:
        """The named classes, or (labels without names) one more than the largest label."""
        return len(self.classes) or 1 + max((r.label for rs in self.subsets.values() for r in rs), default=0)


class DatasetError(Exception):
    """A dataset root or split file is not where or what it should be."""


def _first_existing(root: Path, candidates: list[str], what: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    looked = ", ".join(str(root / c) for c in candidates)
    raise DatasetError(f"{what} not found; looked for: {looked}")


def _read_text(path: Path) -> str:
    """A dataset file's text; DatasetError naming the file when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not data
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: not UTF-8 text (byte {e.object[e.start]:#04x}); save it as UTF-8"
                           ) from None
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()]


def _check_split(split: int, allowed: tuple[int, ...], name: str) -> None:
    if split not in allowed:
        raise DatasetError(f"{name} has splits {list(allowed)}, got --split {split}")


# -- UCF101 -------------------------------------------------------------------


def index_ucf101(root: str | Path, split: int = 1) -> DatasetIndex:
    """UCF101: ``classInd.txt``, ``trainlist0N.txt`` (path, 1-based label), ``testlist0N.txt`` (path).

    Split files in ``ROOT/ucfTrainTestlist/`` or ``ROOT/``; videos in ``ROOT/UCF-101/CLASS/``
    or ``ROOT/CLASS/``.
    """
    _check_split(split, (1, 2, 3), "UCF101")
    root = Path(root)
    lists = _first_existing(root, ["ucfTrainTestlist/classInd.txt", "classInd.txt"], "UCF101 classInd.txt").parent
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    classes: list[str] = []
    for line in _read_lines(lists / "classInd.txt"):
        num, name = line.split()
        if int(num) != len(classes) + 1:
            raise DatasetError(f"{lists / 'classInd.txt'}: expected class number {len(classes) + 1}, got {num}")
        classes.append(name)
    label_of = {c: i for i, c in enumerate(classes)}

    def records(list_file: str) -> list[VideoRecord]:
        out = []
        for line in _read_lines(_first_existing(lists, [list_file], f"UCF101 {list_file}")):
            rel = line.split()[0]
            class_name = rel.split("/")[0]
            if class_name not in label_of:
                raise DatasetError(f"{lists / list_file}: class {class_name!r} of {rel} is not in classInd.txt")
            out.append(VideoRecord(str(videos / rel), label_of[class_name], class_name, Path(rel).stem))
        return out

    return DatasetIndex(
        "ucf101", str(root),
        {"train": records(f"trainlist0{split}.txt"), "test": records(f"testlist0{split}.txt")}, classes,
    )


# -- HMDB51 (and Actor-HMDB51) ---------------------------------------------------

_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[123])\.txt$")


def index_hmdb51(root: str | Path, split: int = 1) -> DatasetIndex:
    """HMDB51: ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``, lines ``name.avi N``.

    N is 1 for train, 2 for test, 0 for unused. Videos in ``ROOT/<class>/`` (or
    ``ROOT/videos/<class>/``). Actor-HMDB51 uses the same layout.
    """
    _check_split(split, (1, 2, 3), "HMDB51")
    root = Path(root)
    split_dir = _first_existing(root, ["testTrainMulti_7030_splits"], "HMDB51 split folder")
    videos = root / "videos" if (root / "videos").is_dir() else root
    files = {}
    for f in sorted(split_dir.iterdir()):
        m = _HMDB_SPLIT.match(f.name)
        if m and int(m["n"]) == split:
            files[m["cls"]] = f
    if not files:
        raise DatasetError(f"no *_test_split{split}.txt files in {split_dir}")
    classes = sorted(files)
    subsets: dict[str, list[VideoRecord]] = {"train": [], "test": []}
    for label, cls in enumerate(classes):
        for line in _read_lines(files[cls]):
            name, tag = line.split()
            subset = {"1": "train", "2": "test"}.get(tag)
            if subset is None:
                if tag != "0":
                    raise DatasetError(f"{files[cls]}: split tag must be 0, 1 or 2, got {tag!r}")
                continue
            subsets[subset].append(VideoRecord(str(videos / cls / name), label, cls, Path(name).stem))
    return DatasetIndex("hmdb51", str(root), subsets, classes)


# -- Diving48 V2 -----------------------------------------------------------------


def index_diving48(root: str | Path, split: int = 1) -> DatasetIndex:
    """Diving48 V2: ``Diving48_V2_{train,test}.json`` (vid_name, label, start_frame, end_frame).

    Videos in ``ROOT/rgb/<vid_name>.mp4``. Class names come from
    ``Diving48_vocab.json`` when present, else are the label numbers.
    """
    _check_split(split, (1,), "Diving48")
    root = Path(root)
    vocab_file = root / "Diving48_vocab.json"
    vocab = json.loads(_read_text(vocab_file)) if vocab_file.exists() else None
    subsets: dict[str, list[VideoRecord]] = {}
    labels: set[int] = set()
    for subset in ("train", "test"):
        f = _first_existing(root, [f"Diving48_V2_{subset}.json"], f"Diving48 {subset} annotations")
        try:
            entries = json.loads(_read_text(f))
            recs = [
                VideoRecord(
                    str(root / "rgb" / f"{e['vid_name']}.mp4"), int(e["label"]), "", e["vid_name"],
                    int(e["start_frame"]), int(e["end_frame"]),
                )
                for e in entries
            ]
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{f}: bad entry ({type(e).__name__}: {e})") from None
        labels.update(r.label for r in recs)
        subsets[subset] = recs
    n = max(labels) + 1 if labels else 0
    classes = [" / ".join(map(str, vocab[i])) if vocab else str(i) for i in range(n)]
    subsets = {k: [_with_class(r, classes[r.label]) for r in v] for k, v in subsets.items()}
    return DatasetIndex("diving48", str(root), subsets, classes)


def _with_class(r: VideoRecord, class_name: str) -> VideoRecord:
    return VideoRecord(r.path, r.label, class_name, r.video_id, r.start_frame, r.end_frame)


# -- Kinetics-400 ----------------------------------------------------------------


def index_kinetics400(root: str | Path, split: int = 1) -> DatasetIndex:
    """Kinetics-400: CSVs ``label,youtube_id,time_start,time_end,split`` in ``ROOT/annotations/`` or ``ROOT/``.

    Files are ``ROOT/<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``. Labels
    are numbered in sorted order of the train CSV's class names. Missing files are
    dropped and counted (a real Kinetics copy always misses some).
    """
    _check_split(split, (1,), "Kinetics-400")
    root = Path(root)
    ann = root / "annotations" if (root / "annotations").is_dir() else root
    csvs = sorted(ann.glob("*.csv"))
    if not csvs:
        raise DatasetError(f"no Kinetics annotation CSV in {ann}")
    rows = []
    for f in csvs:
        reader = csv.DictReader(io.StringIO(_read_text(f), newline=""))
        need = {"youtube_id", "time_start", "time_end", "split"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DatasetError(f"{f}: expected columns label,youtube_id,time_start,time_end,split")
        rows.extend(reader)
    classes = sorted({r["label"] for r in rows if r.get("label")})
    label_of = {c: i for i, c in enumerate(classes)}
    subsets: dict[str, list[VideoRecord]] = {}
    missing = []
    for r in rows:
        vid = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        cls = r.get("label") or ""
        path = root / r["split"] / cls / f"{vid}.mp4" if cls else root / r["split"] / f"{vid}.mp4"
        if not path.exists():
            missing.append(str(path))
            continue
        subsets.setdefault(r["split"], []).append(VideoRecord(str(path), label_of.get(cls, -1), cls, vid))
    return DatasetIndex("kinetics400", str(root), subsets, classes, missing)


# -- generic manifest --------------------------------------------------------------


def index_manifest(root: str | Path, split: int = 1) -> DatasetIndex:
    """Manifest CSV(s): ``path,label[,start_frame,end_frame]``, one file per subset.

    ``root`` is a CSV (one subset named after the file) or a folder of CSVs (one
    subset each, e.g. ``train.csv``, ``test.csv``). A header row is optional;
    columns beyond these are ignored. Relative paths are relative to the CSV.
    ``label`` is an integer or a class name; ``classes.txt`` beside the CSVs
    (line i: the name of label i) names integer labels.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.glob("*.csv"))
    if not files:
        raise DatasetError(f"no manifest CSV at {root}")
    classes_file = files[0].parent / "classes.txt"
    classes = _read_lines(classes_file) if classes_file.exists() else []
    raw: dict[str, list[tuple]] = {}
    for f in sorted(files, key=lambda f: f.stem != "train"):  # train first, the rest in name order
        raw[f.stem] = _manifest_rows(f)
    names = sorted({lab for rows in raw.values() for _, lab, *_ in rows if not lab.lstrip("-").isdigit()})
    if names:  # class-name labels: number them in sorted order (after classes.txt's)
        classes += [n for n in names if n not in classes]
    label_of = {c: i for i, c in enumerate(classes)}
    subsets = {}
    for subset, rows in raw.items():
        recs = []
        for path, lab, start, end in rows:
            label = int(lab) if lab.lstrip("-").isdigit() else label_of[lab]
            name = classes[label] if 0 <= label < len(classes) else str(label)
            recs.append(VideoRecord(path, label, name, Path(path).stem, start, end))
        subsets[subset] = recs
    return DatasetIndex("manifest", str(root), subsets, classes)


def _manifest_rows(f: Path) -> list[tuple[str, str, int | None, int | None]]:
    lines = [row for row in csv.reader(io.StringIO(_read_text(f), newline="")) if row and not row[0].startswith("#")]
    if not lines:
        return []
    header = [c.strip().lower() for c in lines[0]]
    if "path" in header and "label" in header:
        cols = {c: header.index(c) for c in ("path", "label", "start_frame", "end_frame") if c in header}
        lines = lines[1:]
    else:
        cols = {c: i for i, c in enumerate(("path", "label", "start_frame", "end_frame")[: len(header)])}
    rows = []
    for n, row in enumerate(lines, start=2 if "path" in header else 1):
        try:
            path = Path(row[cols["path"]].strip())
            start = row[cols["start_frame"]].strip() if "start_frame" in cols else ""
            end = row[cols["end_frame"]].strip() if "end_frame" in cols else ""
            rows.append((
                str(path if path.is_absolute() else f.parent / path), row[cols["label"]].strip(),
                int(start) if start else None, int(end) if end else None,
            ))
        except (IndexError, ValueError, KeyError) as e:
            raise DatasetError(f"{f}, line {n}: expected path,label[,start_frame,end_frame] ({e})") from None
    return rows


DATASETS: dict[str, Callable[[str | Path, int], DatasetIndex]] = {
    "ucf101": index_ucf101,
    "hmdb51": index_hmdb51,
    "actor-hmdb51": index_hmdb51,
    "diving48": index_diving48,
    "kinetics400": index_kinetics400,
    "manifest": index_manifest,
}


def subset_names(name: str = "synth", root: str | Path | None = None) -> list[str] | None:
    """The subsets ``index_dataset`` would give, without indexing a video; None where only the data says
    (a Kinetics or manifest root that is not on this machine)."""
    name = name.lower()
    if name == "synth" and root is None:
        from beray.data.synth import SPLITS

        return list(SPLITS)
    if name in ("ucf101", "hmdb51", "actor-hmdb51", "diving48"):
        return ["train", "test"]
    root = Path(root) if root is not None else None
    if root is None or not root.exists():
        return None
    if name == "kinetics400":
        ann = root / "annotations" if (root / "annotations").is_dir() else root
        return sorted({r.get("split") for f in ann.glob("*.csv")
                       for r in csv.DictReader(io.StringIO(_read_text(f), newline=""))} - {None})
    return [f.stem for f in ([root] if root.is_file() else sorted(root.glob("*.csv")))]


def index_dataset(name: str = "synth", root: str | Path | None = None, split: int = 1,
                  synth: dict | None = None) -> DatasetIndex:
    """Index dataset ``name`` at ``root`` (raises DatasetError saying what is wrong).

    ``synth`` with no root is BackgroundBias-Synth with the generator options ``synth`` (a
    SynthConfig's fields), generated once into the cache.
    """
    name = name.lower()
    if name == "synth":
        if root is None:
            from beray.data.synth import ensure_synth, synth_config

            root = ensure_synth(synth_config(synth))
        fn = index_manifest
    elif name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: synth, {', '.join(DATASETS)}")
    elif root is None:
        raise DatasetError(f"dataset {name} needs a root folder (--root DIR); see README.md, 'Datasets'")
    else:
        fn = DATASETS[name]
    if not Path(root).exists():
        raise DatasetError(f"dataset root {root} does not exist")
    index = fn(root, split)
    index.name = name
    return index
