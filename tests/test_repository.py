"""Rules of the repository itself: imports point one way, law/ needs no torch, every document a
comment cites is in the repo, and every TensorBoard tag is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "megasparse"

# Layers of the package, lowest first: a module may import its own subpackage and any lower layer
# (docs/design.md §2). law/ sits just above the ground so that only the top (cli) uses it.
LAYERS = [
    {"config", "tags", "progress", "resources"},
    {"kernels", "data", "law"},
    {"model"},
    {"parallel"},
    {"checkpoint"},
    {"sparsity"},
    {"training"},
    {"cli", "train"},
    {"__main__"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(path: Path) -> str:
    """The subpackage (or top-level module) a file belongs to: megasparse/model/mlp.py -> model."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, function-local imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "megasparse":
                found += [(node.lineno, f"megasparse.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in _package_files()}
    assert units - set(LAYER_OF) == set(), "add new subpackages to LAYERS (and docs/design.md §2)"


def test_imports_point_one_way():
    wrong = []
    for path in _package_files():
        unit = _unit(path)
        for line, module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] != "megasparse" or len(parts) < 2 or parts[1] == unit:
                continue
            if parts[1] not in LAYER_OF:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports unknown unit {module}")
            elif LAYER_OF[parts[1]] >= LAYER_OF[unit]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {unit} imports {module} (same or higher layer)")
    assert not wrong, "\n".join(wrong)


def test_law_imports_no_torch_and_package_imports_no_tools_or_dev():
    wrong = []
    for path in _package_files():
        for line, module in _imported_modules(path):
            top = module.split(".")[0]
            if top in ("tools", "dev", "benchmarks", "tests"):
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
            if _unit(path) == "law" and top == "torch":
                wrong.append(f"{path.relative_to(REPO)}:{line}: law/ imports torch")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------ references
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".sh", ".toml"}
SECTION_REF = re.compile(r"(docs/[a-z_-]+\.md|RESULTS\.md) §(\d+(?:\.\d+)?[a-z]?)")


def _tracked_text_files() -> list[Path]:
    skip = ("benchmarks/results", "dev/kernels/results", ".venv", "runs")
    return [
        p
        for p in REPO.rglob("*")
        if p.is_file()
        and p.suffix in TEXT_SUFFIXES
        and not any(str(p.relative_to(REPO)).startswith(s) for s in skip)
        and ".git" not in p.parts
    ]


def _headings(doc: Path) -> set[str]:
    """Section numbers of a Markdown file's headings: '## 3. Contracts' -> '3', '### 3.2 Data' -> '3.2'."""
    numbers = set()
    for line in doc.read_text().splitlines():
        m = re.match(r"#+\s+(?:§)?(\d+(?:\.\d+)?[a-z]?)[.\s]", line + " ")
        if m:
            numbers.add(m.group(1))
    return numbers


def test_no_reference_points_outside_the_repository():
    pattern = re.compile(r"DESIGN §|DESIGN\.md|reference/[a-z-]+\.md|\bspec §")
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in _tracked_text_files()
        if p != Path(__file__).resolve()
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "references to documents that are not in the repo:\n" + "\n".join(hits)


def test_section_references_resolve():
    sections = {"RESULTS.md": _headings(REPO / "benchmarks" / "RESULTS.md")}
    sections.update({f"docs/{d.name}": _headings(d) for d in (REPO / "docs").glob("*.md")})
    broken = []
    for path in _tracked_text_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for doc, number in SECTION_REF.findall(line):
                if doc not in sections:
                    broken.append(f"{path.relative_to(REPO)}:{i}: {doc} does not exist")
                elif number not in sections[doc] and number.split(".")[0] not in sections[doc]:
                    broken.append(f"{path.relative_to(REPO)}:{i}: {doc} has no section {number}")
    assert not broken, "\n".join(broken)


# ------------------------------------------------------------------------------ tags
def test_every_tag_is_documented():
    from megasparse import tags

    doc = (REPO / "docs" / "tensorboard.md").read_text()
    prefixes = {tags.SPARSITY, tags.CETT}
    names = [v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str) and v not in prefixes]
    names += [
        tags.layer_activation_ratio(0).replace("00", "XX"),
        tags.neuron_frequency(0).replace("00", "XX"),
        tags.layer_activation_ratio(0, tags.CETT).replace("00", "XX"),
        tags.dead_neuron_ratio(),
        tags.measurement("<method>", "value"),
    ]
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"tags missing from docs/tensorboard.md: {missing}"


@pytest.mark.parametrize(
    "layer,expected", [(0, "sparsity/layer_00/activation_ratio"), (12, "sparsity/layer_12/activation_ratio")]
)
def test_layer_tags_are_zero_padded(layer, expected):
    from megasparse import tags

    assert tags.layer_activation_ratio(layer) == expected
