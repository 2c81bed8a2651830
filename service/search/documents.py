"""Documents for the local index, read from the files ``ttc-router index add`` is given.

- ``.jsonl``: one JSON object a line with ``text`` (required), ``id`` and ``title``. A line
  without ``id`` gets ``PATH:LINE`` (PATH absolute, ``source_name``); re-adding an id
  replaces that document.
- ``.txt`` and ``.md``: split into passages of whole paragraphs (blank-line separated) of up
  to ``PASSAGE_CHARS`` characters, so that a hit is a passage a model can read, not a whole
  book; a longer paragraph is cut at line breaks, and a longer line at spaces.
  Ids are ``PATH#N`` (``passage_id``, PATH absolute); the title is the file's first Markdown
  heading (``.md``) or its name, with the current ``#`` section heading appended for Markdown.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

SUFFIXES = (".jsonl", ".txt", ".md")
# About 250 tokens at 4 characters a token: a few passages fit a search result block.
PASSAGE_CHARS = 1000
# The UTF-8 byte order mark some editors write first (Windows Notepad, PowerShell): not text.
BOM = b"\xef\xbb\xbf"
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


class DocumentError(ValueError):
    """An input file cannot be read as documents; the message names the file and line."""


@dataclass(frozen=True)
class Document:
    """One document to index: ``id`` (unique in the index), ``title`` and ``text``."""

    id: str
    title: str
    text: str


def input_files(paths: list[Path]) -> list[Path]:
    """The files to read: each file as given, and every ``.jsonl``/``.txt``/``.md`` file
    under each directory (sorted); a file named twice (``docs/`` and ``docs/a.md``) once.

    Raises:
        DocumentError: a path that does not exist, a file of another type, or a directory
            with no file of those types under it.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and
                           p.suffix.lower() in SUFFIXES)
            if not found:
                # Else a folder of PDFs reads as a successful run that added nothing.
                raise DocumentError(f"{path}: no .jsonl, .txt or .md file under it")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise DocumentError(f"{path}: not a .jsonl, .txt or .md file")
            files.append(path)
        else:
            raise DocumentError(f"{path}: no such file or directory")
    unique: dict[str, Path] = {}
    for file in files:
        unique.setdefault(source_name(file), file)
    return list(unique.values())


def source_name(path: Path) -> str:
    """The name of an input file in the ids of its documents: its absolute path, so that the
    file added again from another directory, or as ``./x.txt`` or ``sub/../x.txt``, replaces
    its documents instead of adding copies (which then filled the top hits)."""
    return str(path.resolve())


def passage_id(path: Path, number: int) -> str:
    """The id of the ``number``-th passage (from 1) of a ``.txt``/``.md`` file."""
    return f"{source_name(path)}#{number}"


def read_documents(path: Path) -> Iterator[tuple[Document, int]]:
    """The documents of one file, each with the bytes of the file read so far (for progress).

    Raises:
        DocumentError: a JSONL line that is not an object with a string ``text``, or a file
            that is not UTF-8.
    """
    try:
        if path.suffix.lower() == ".jsonl":
            yield from _jsonl(path)
        else:
            yield from _passages(path)
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def _jsonl(path: Path) -> Iterator[tuple[Document, int]]:
    done = 0
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            done += len(raw)
            if number == 1:
                raw = raw.removeprefix(BOM)
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise DocumentError(f"{path}:{number}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DocumentError(f'{path}:{number}: expected an object with a "text" string')
            doc_id = row.get("id")
            title = row.get("title")
            yield Document(id=str(doc_id) if doc_id is not None else
                           f"{source_name(path)}:{number}",
                           title=title if isinstance(title, str) else "",
                           text=row["text"]), done


def _passages(path: Path) -> Iterator[tuple[Document, int]]:
    content = path.read_text(encoding="utf-8-sig")
    markdown = path.suffix.lower() == ".md"
    title = path.stem
    if markdown:
        first = next((m for m in map(_HEADING.match, content.splitlines()) if m), None)
        if first:
            title = first.group(2)
    section = ""
    buffer: list[str] = []
    number = 0
    done = 0

    def flush() -> Document:
        nonlocal number
        number += 1
        heading = f"{title} / {section}" if section and section != title else title
        return Document(id=passage_id(path, number), title=heading, text="\n\n".join(buffer))

    for block in re.split(r"\n\s*\n", content):
        done += len(block.encode()) + 2
        block = block.strip()
        if not block:
            continue
        heading = _HEADING.match(block.splitlines()[0]) if markdown else None
        for paragraph in _pieces(block):
            if heading or (buffer and sum(map(len, buffer)) + len(paragraph) > PASSAGE_CHARS):
                if buffer:
                    yield flush(), done
                    buffer = []
                if heading:
                    section = heading.group(2)
                    heading = None
            buffer.append(paragraph)
    if buffer:
        yield flush(), len(content.encode())


def _pieces(paragraph: str) -> list[str]:
    """A paragraph cut into pieces of at most ``PASSAGE_CHARS`` characters: whole lines where
    they fit, a longer line at spaces (``textwrap``). Files without blank lines (one
    paragraph a line, hard-wrapped text, a book in one line) were one passage however large:
    a 16 MB file one hit of 16 MB."""
    if len(paragraph) <= PASSAGE_CHARS:
        return [paragraph]
    pieces: list[str] = []
    lines: list[str] = []
    size = -1  # the characters of the lines so far, joined by line breaks
    for line in paragraph.splitlines():
        parts = (textwrap.wrap(line, PASSAGE_CHARS, break_on_hyphens=False)
                 if len(line) > PASSAGE_CHARS else [line])
        for part in parts:
            if lines and size + 1 + len(part) > PASSAGE_CHARS:
                pieces.append("\n".join(lines))
                lines, size = [], -1
            lines.append(part)
            size += 1 + len(part)
    if lines:
        pieces.append("\n".join(lines))
    return pieces
