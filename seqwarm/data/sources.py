"""The documents of `seqwarm prepare`'s inputs, streamed: text, JSONL (plain, .gz, .zst), Parquet, saved datasets.

An input is a file, a directory (searched recursively for the formats below, in sorted order),
or a glob (`data/*.jsonl.zst`, `**` recursive). A directory holding a Hugging Face
`datasets.save_to_disk` result (`state.json`, or `dataset_dict.json` for several splits) is read
as that dataset, straight from its Arrow files with pyarrow: `datasets` itself is not needed.

    .txt .md .rst .text              one document per file
    .jsonl .json (+ .gz, .zst)       one document per line: an object whose `--text-field` is a string
    .parquet                         one document per row: the `--text-field` column
    save_to_disk directory           one document per row: the `--text-field` column

Documents are named by their path below the input's parent (the split rule hashes the names, so
they must not change when the corpus moves), a record by its file and its line or row number
(1-based): `docs/a.txt`, `docs/b.jsonl:3`, `docs/c.parquet:7`. The compression suffix is not part
of the name, so `b.jsonl`, `b.jsonl.gz` and `b.jsonl.zst` split alike. Everything is read a
line, or a record batch, at a time: memory does not grow with a file's size.

`prepare`'s workers read the input themselves, so that its process only moves bytes: `read_units`
cuts the input into `Unit`s (whole lines of JSONL, decompressed; a Parquet/Arrow record batch's
text column; a group of text files, by name), doing no parsing, and `unit_documents` turns a unit
into documents, in any process. `read_input` is the two in one process: there is one reader per format.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from seqwarm.errors import DataError, first_line

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json"}
COMPRESSED = {".gz", ".zst"}
PARQUET_SUFFIXES = {".parquet"}
ROWS_PER_BATCH = 1024  # Parquet/Arrow rows decoded at a time
READ_BYTES = 1 << 20  # JSONL read at a time by `read_input`


@dataclass(frozen=True)
class Document:
    source: str  # a stable name: e.g. "docs/a.txt", "docs/b.jsonl:3", "shakespeare/hamlet", "wikipedia/Anarchism"
    text: str


@dataclass(frozen=True)
class InputFile:
    """One file (or saved dataset directory) to read, and the name its documents are given."""

    path: Path
    name: str
    kind: str  # "text", "jsonl", "parquet", "dataset"

    def fingerprint(self) -> list:
        """What a resumed prepare checks to know the input is unchanged: its name, size and mtime."""
        paths = dataset_files(self.path) if self.kind == "dataset" else [self.path]
        return [self.name, [[p.stat().st_size, p.stat().st_mtime_ns] for p in paths]]


def file_kind(path: Path) -> str | None:
    suffixes = path.suffixes[-2:] if path.suffix in COMPRESSED else path.suffixes[-1:]
    if not suffixes:
        return None
    if path.suffix in COMPRESSED:
        return "jsonl" if len(suffixes) == 2 and suffixes[0] in JSONL_SUFFIXES else None
    if path.suffix in TEXT_SUFFIXES:
        return "text"
    if path.suffix in JSONL_SUFFIXES:
        return "jsonl"
    if path.suffix in PARQUET_SUFFIXES:
        return "parquet"
    return None


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def list_inputs(inputs: Iterable[str]) -> list[InputFile]:
    """The files of `inputs`, in order, checked to exist and to be of a known format (before any reading)."""
    out: list[InputFile] = []
    for item in inputs:
        path = Path(item)
        if not path.exists() and glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            base = _glob_base(item)
            files = [p for p in matches if p.is_file() and file_kind(p)] + [p for p in matches if is_saved_dataset(p)]
            if not files:
                raise DataError(f"{item}: no file of a known format matches (.txt/.md/.jsonl[.gz|.zst]/.parquet)")
            out += [_input(p, p.relative_to(base.parent).as_posix()) for p in sorted(files)]
            continue
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if is_saved_dataset(path):
            out.append(InputFile(path, path.name, "dataset"))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and file_kind(p))
            if not files:
                raise DataError(f"{path}: no .txt/.md/.jsonl[.gz|.zst]/.parquet files in this directory")
            out += [_input(p, p.relative_to(path.parent).as_posix()) for p in files]
        else:
            # A file given by name is read whatever its suffix: text unless it says otherwise.
            out.append(_input(path, path.name, default="text"))
    return out


def _glob_base(pattern: str) -> Path:
    """The directory part of a glob before its first wildcard: names are relative to its parent, as for a directory."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(*fixed) if fixed else Path(".")


def _input(path: Path, name: str, default: str | None = None) -> InputFile:
    kind = file_kind(path) or default
    if path.suffix in COMPRESSED and kind != "jsonl":
        raise DataError(f"{path}: only JSONL is read compressed (.jsonl.gz, .jsonl.zst)")
    if path.suffix in COMPRESSED:
        name = name.removesuffix(path.suffix)  # b.jsonl.zst splits as b.jsonl does
    return InputFile(path, name, kind)


def read_documents(inputs: Iterable[str], text_field: str = "text") -> Iterator[Document]:
    """Every document of `inputs`, in order (see the module docstring)."""
    for file in list_inputs(inputs):
        yield from read_input(file, text_field)


def read_input(file: InputFile, text_field: str = "text") -> Iterator[Document]:
    """The documents of one input, read here: its units (`read_units`) read in this process."""
    for unit in read_units([file], text_field, READ_BYTES):
        yield from unit_documents(unit, text_field)


def _read_text(path: Path, name: str) -> Document:
    try:
        return Document(name, path.read_text(encoding="utf-8"))  # newlines translated, as always
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or first_line(e)})") from e


def _open_binary(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: reading .zst needs the zstandard package: pip install zstandard") from None
        raw = path.open("rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True))
    return path.open("rb")


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (gzip.BadGzipFile, EOFError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _require_pyarrow(path: Path):
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"{path}: reading Parquet/Arrow needs the pyarrow package: pip install pyarrow") from None
    return pyarrow


def _rows(path: Path, column, field: str, name: str, first: int) -> Iterator[Document]:
    """The documents of a `field` column (a pyarrow array) whose first row is number `first`."""
    for row, text in enumerate(column.to_pylist(), first):
        if not isinstance(text, str):
            raise DataError(f"{path}: row {row}: {field!r} must be a string, not {type(text).__name__}")
        yield Document(f"{name}:{row}", text)


def _parquet_file(file: InputFile, field: str):
    pa = _require_pyarrow(file.path)
    try:
        # Read as it is decoded: pre-buffering a row group's column chunks held 60-100 MB more per process.
        pf = pa.parquet.ParquetFile(file.path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{file.path}: not a readable Parquet file ({first_line(e)})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise DataError(f"{file.path}: no column {field!r} (columns: {', '.join(names)}; choose with --text-field)")
    return pf


def dataset_files(path: Path) -> list[Path]:
    """The Arrow files of a `save_to_disk` directory, in the order the dataset lists them (splits in order)."""
    try:
        if (path / "dataset_dict.json").is_file():
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            return [f for split in splits for f in dataset_files(path / split)]
        state = json.loads((path / "state.json").read_text())
        return [path / f["filename"] for f in state["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a readable datasets.save_to_disk directory ({first_line(e)})") from None


def _arrow_stream(pa, arrow: Path, source, field: str):
    reader = pa.ipc.open_stream(source)
    if field not in reader.schema.names:
        raise DataError(
            f"{arrow}: no column {field!r} (columns: {', '.join(reader.schema.names)}; choose with --text-field)"
        )
    return reader


# --- units: the input cut into pieces that worker processes read ----------------------------------


@dataclass(frozen=True)
class Unit:
    """A piece of input that `unit_documents` reads into whole documents, in any process.

    kind "jsonl": `payload` is whole lines of a JSONL file (decompressed bytes), `first` the first's
    number; "arrow": a Parquet/Arrow text column (a pyarrow array), `first` its first row's number;
    "text": text files to read, a list of (path, name); "docs": Documents already in memory.
    `size` is the bytes (characters for "docs") it holds or will read.
    """

    kind: str
    path: str
    name: str
    first: int
    payload: object
    size: int


def read_units(files: Iterable[InputFile], field: str, unit_bytes: int) -> Iterator[Unit]:
    """The input of `files` as units of about `unit_bytes` (one record batch for Parquet/Arrow), in order."""
    group: list[tuple[str, str]] = []
    size = 0
    for file in files:
        if file.kind == "text":
            try:
                group.append((str(file.path), file.name))
                size += file.path.stat().st_size
            except OSError as e:
                raise DataError(f"{file.path}: cannot read ({e.strerror or first_line(e)})") from e
            if size >= unit_bytes:
                yield Unit("text", "", "", 0, group, size)
                group, size = [], 0
            continue
        if group:
            yield Unit("text", "", "", 0, group, size)
            group, size = [], 0
        if file.kind == "jsonl":
            yield from _jsonl_units(file, unit_bytes)
        elif file.kind == "parquet":
            yield from _parquet_units(file, field)
        else:
            yield from _dataset_units(file, field)
    if group:
        yield Unit("text", "", "", 0, group, size)


def document_units(docs: Iterable[Document], unit_chars: int) -> Iterator[Unit]:
    """Documents in memory as units of about `unit_chars` characters."""
    group: list[Document] = []
    size = 0
    for doc in docs:
        group.append(doc)
        size += len(doc.text)
        if size >= unit_chars:
            yield Unit("docs", "", "", 0, group, size)
            group, size = [], 0
    if group:
        yield Unit("docs", "", "", 0, group, size)


def unit_documents(unit: Unit, field: str = "text") -> Iterator[Document]:
    """The documents of `unit`, as `read_input` gives them (its names, its errors)."""
    if unit.kind == "docs":
        yield from unit.payload  # type: ignore[misc]
    elif unit.kind == "jsonl":
        yield from _jsonl_documents(unit, field)
    elif unit.kind == "arrow":
        yield from _rows(Path(unit.path), unit.payload, field, unit.name, unit.first)
    else:
        for path, name in unit.payload:  # type: ignore[attr-defined]
            yield _read_text(Path(path), name)


def _jsonl_units(file: InputFile, unit_bytes: int) -> Iterator[Unit]:
    lineno = 1
    try:
        with _open_binary(file.path) as f:
            while block := f.read(unit_bytes):
                if not block.endswith(b"\n"):
                    block += f.readline()  # whole lines only
                yield Unit("jsonl", str(file.path), file.name, lineno, block, len(block))
                lineno += block.count(b"\n")
    except _corrupt_errors() as e:
        raise DataError(
            f"{file.path}: corrupt {file.path.suffix.lstrip('.')} data after line {lineno - 1} ({first_line(e)})"
        ) from None
    except OSError as e:
        raise DataError(f"{file.path}: cannot read ({e.strerror or first_line(e)})") from e


def _jsonl_documents(unit: Unit, field: str) -> Iterator[Document]:
    try:
        lines: list = unit.payload.decode("utf-8").split("\n")  # type: ignore[attr-defined]
    except UnicodeDecodeError:
        lines = unit.payload.split(b"\n")  # type: ignore[attr-defined]  # decoded line by line, to name the bad one
    if lines and not lines[-1]:
        lines.pop()  # after the last newline
    for lineno, line in enumerate(lines, unit.first):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{unit.path}:{lineno}: not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            text = json.loads(line)[field]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
            raise DataError(f"{unit.path}:{lineno}: expected a JSON object with a {field!r} field") from e
        if not isinstance(text, str):
            raise DataError(f"{unit.path}:{lineno}: {field!r} must be a string")
        yield Document(f"{unit.name}:{lineno}", text)


def _parquet_units(file: InputFile, field: str) -> Iterator[Unit]:
    pa = _require_pyarrow(file.path)
    pf = _parquet_file(file, field)
    row = 1
    try:
        for batch in pf.iter_batches(batch_size=ROWS_PER_BATCH, columns=[field]):
            column = batch.column(field)
            yield Unit("arrow", str(file.path), file.name, row, column, column.nbytes)
            row += len(column)
    except pa.ArrowException as e:
        raise DataError(f"{file.path}: corrupt Parquet data ({first_line(e)})") from None


def _dataset_units(file: InputFile, field: str) -> Iterator[Unit]:
    pa = _require_pyarrow(file.path)
    row = 1
    for arrow in dataset_files(file.path):
        try:
            # Not closed here: the columns sent to the workers are views of the map, which they keep alive.
            reader = _arrow_stream(pa, arrow, pa.memory_map(str(arrow)), field)
            for batch in reader:
                column = batch.column(field)
                yield Unit("arrow", str(arrow), file.name, row, column, column.nbytes)
                row += len(column)
        except pa.ArrowException as e:
            raise DataError(f"{arrow}: corrupt Arrow data ({first_line(e)})") from None
