"""Input layouts for make_shards: turn a dataset folder (or a manifest file) into an ordered list of videos.

Every layout returns the same thing: a deterministic, sorted list of :class:`VideoItem` and the class list
(``classes[label] == class_name``). Shard contents depend only on this order, never on the file system's
listing order or the number of workers.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vqvdm_scale.config.core import UserError
from vqvdm_scale.data.video_io import IMAGE_EXTENSIONS

LayoutName = Literal["folder", "ucf101", "sky", "manifest"]
LAYOUTS: tuple[str, ...] = ("folder", "ucf101", "sky", "manifest")
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".avi",
    ".mkv",
    ".mov",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".ts",
)


@dataclass(frozen=True)
class VideoItem:
    """One input video: where it is, its label, and the path (relative to the input root) used in keys."""

    source: str  # absolute local path of the file or frame folder
    label: int
    class_name: str
    kind: Literal["file", "frames_dir"]
    rel: str  # posix path relative to the dataset root: stable across machines, used for keys and reports


@dataclass(frozen=True)
class ItemList:
    """The ordered videos of a dataset and its class names (index = label)."""

    items: list[VideoItem]
    classes: list[str]


def _norm_exts(extensions: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _walk_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: _rel(p, root))


def _require_dir(root: Path, layout: str) -> None:
    if not root.is_dir():
        raise UserError(
            f"--input {str(root)!r} is not a directory; the {layout!r} layout needs a dataset folder"
        )


def folder_layout(root: str | os.PathLike[str], extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> ItemList:
    """Videos found recursively; class = the parent folder (relative to root; root's own name for top-level files)."""
    base = Path(root).resolve()
    _require_dir(base, "folder")
    files = _walk_files(base, _norm_exts(extensions))
    names = [_rel(f.parent, base) if f.parent != base else base.name for f in files]
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    items = [
        VideoItem(str(f), index[name], name, "file", _rel(f, base))
        for f, name in zip(files, names, strict=True)
    ]
    return ItemList(items, classes)


def _find_class_ind(root: Path, split_file: Path | None) -> Path:
    candidates = []
    if split_file is not None:
        candidates.append(split_file.parent / "classInd.txt")
    candidates += [
        root / "classInd.txt",
        root / "ucfTrainTestlist" / "classInd.txt",
        root.parent / "ucfTrainTestlist" / "classInd.txt",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(
        "ucf101 layout: classInd.txt not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + ". Put the official ucfTrainTestlist files beside --split-file or in --input."
    )


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def ucf101_layout(
    root: str | os.PathLike[str],
    split_file: str | os.PathLike[str] | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
) -> ItemList:
    """UCF-101: ``root/<Class>/v_*.avi`` + classInd.txt (1-based); ``split_file`` = trainlist0N / testlist0N.

    Without a split file every video under the class folders is listed. Videos named in the split file but
    absent on disk are still listed, so the shard report counts them as ``missing``.
    """
    base = Path(root).resolve()
    _require_dir(base, "ucf101")
    split = Path(split_file).resolve() if split_file else None
    if split is not None and not split.is_file():
        raise UserError(f"--split-file {str(split)!r} does not exist")
    class_ind = _find_class_ind(base, split)
    classes: list[str] = []
    for n, line in enumerate(_read_lines(class_ind), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{class_ind}:{n}: expected '<index> <ClassName>', got {line!r}")
        if int(parts[0]) != len(classes) + 1:
            raise UserError(f"{class_ind}:{n}: class indices must run 1, 2, 3, ...; got {parts[0]}")
        classes.append(parts[1])
    index = {name: i for i, name in enumerate(classes)}
    lower = {name.lower(): i for i, name in enumerate(classes)}

    def label_of(rel: str, where: str) -> int:
        folder = rel.split("/")[0]
        # Case-insensitive: the official lists write HandstandPushups where files say HandStandPushups.
        label = index.get(folder, lower.get(folder.lower()))
        if label is None:
            raise UserError(f"{where}: class folder {folder!r} is not in {class_ind}")
        return label

    items: list[VideoItem] = []
    if split is None:
        for f in _walk_files(base, _norm_exts(extensions)):
            rel = _rel(f, base)
            if "/" not in rel:
                continue  # UCF-101 keeps every video inside its class folder
            label = label_of(rel, str(f))
            items.append(VideoItem(str(f), label, classes[label], "file", rel))
    else:
        for n, line in enumerate(_read_lines(split), 1):
            parts = line.split()
            rel = parts[0].replace("\\", "/")
            label = label_of(rel, f"{split}:{n}")
            if len(parts) > 1 and int(parts[1]) - 1 != label:
                raise UserError(
                    f"{split}:{n}: label {parts[1]} disagrees with classInd.txt ({label + 1} for {rel.split('/')[0]})"
                )
            items.append(VideoItem(str(base / rel), label, classes[label], "file", rel))
    items.sort(key=lambda it: it.rel)
    return ItemList(items, classes)


def sky_layout(root: str | os.PathLike[str]) -> ItemList:
    """SkyTimelapse: every folder (found recursively) that directly holds frame images is one clip, label 0."""
    base = Path(root).resolve()
    _require_dir(base, "sky")
    clips: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(
            os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS for n in filenames if not n.startswith(".")
        ):
            clips.append(Path(dirpath))
    clips.sort(key=lambda p: _rel(p, base))
    items = [VideoItem(str(c), 0, "sky", "frames_dir", _rel(c, base)) for c in clips]
    return ItemList(items, ["sky"])


def _parse_label(value: object) -> int | str:
    if isinstance(value, bool):
        raise UserError(f"label {value!r} is neither an integer nor a class name")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if not text:
        raise UserError("empty label")
    return text


def manifest_layout(path: str | os.PathLike[str]) -> ItemList:
    """A CSV (header ``path,label[,class_name]``) or JSONL (``{"path", "label"[, "class_name"]}``) list of videos.

    Labels may be integers or class names (not mixed). Relative paths are relative to the manifest file.
    A path naming a directory is read as a folder of frame images.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise UserError(
            f"--input {str(file)!r} is not a file; the 'manifest' layout needs a .csv or .jsonl file"
        )
    rows: list[tuple[str, int | str, str | None, str]] = []
    if file.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(_read_lines(file), 1):
            where = f"{file}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e})") from e
            if not isinstance(rec, dict) or "path" not in rec or "label" not in rec:
                raise UserError(f'{where}: each line needs {{"path": ..., "label": ...}}')
            rows.append((str(rec["path"]), _parse_label(rec["label"]), rec.get("class_name"), where))
    else:
        with open(file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise UserError(f"{file}: the CSV needs a header line with columns path,label[,class_name]")
            for n, rec in enumerate(reader, 2):
                rows.append(
                    (rec["path"], _parse_label(rec["label"]), rec.get("class_name") or None, f"{file}:{n}")
                )
    kinds = {type(label) for _, label, _, _ in rows}
    if len(kinds) > 1:
        raise UserError(f"{file}: labels mix integers and class names; use one or the other")
    if kinds == {str}:
        classes = sorted({str(label) for _, label, _, _ in rows})
        index = {name: i for i, name in enumerate(classes)}
        resolved = [(p, index[str(label)], where) for p, label, _, where in rows]
    else:
        names: dict[int, str] = {}
        for _, label, name, where in rows:
            assert isinstance(label, int)
            if label < 0:
                raise UserError(f"{where}: labels must be >= 0, got {label}")
            if name is not None:
                if names.get(label, name) != name:
                    raise UserError(f"{where}: label {label} is named both {names[label]!r} and {name!r}")
                names[label] = str(name)
        num = max((int(label) for _, label, _, _ in rows), default=-1) + 1
        classes = [names.get(i, str(i)) for i in range(num)]
        resolved = [(p, int(label), where) for p, label, _, where in rows]
    base = file.parent
    items = []
    for p, label, _ in resolved:
        full = (base / p).resolve() if not os.path.isabs(p) else Path(p)
        kind: Literal["file", "frames_dir"] = "frames_dir" if full.is_dir() else "file"
        rel = Path(p).as_posix() if not os.path.isabs(p) else _rel(full, base)
        items.append(VideoItem(str(full), label, classes[label], kind, rel))
    items.sort(key=lambda it: it.rel)
    return ItemList(items, classes)


def list_items(
    layout: str,
    input_path: str | os.PathLike[str],
    split_file: str | os.PathLike[str] | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
) -> ItemList:
    """Dispatch to the named layout."""
    if layout == "folder":
        return folder_layout(input_path, extensions)
    if layout == "ucf101":
        return ucf101_layout(input_path, split_file, extensions)
    if layout == "sky":
        return sky_layout(input_path)
    if layout == "manifest":
        return manifest_layout(input_path)
    raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
