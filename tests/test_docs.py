"""The docs stay true: every repo path a document, a docstring, a comment or a printed message names exists, and
ARCHITECTURE.md's module map and stage table are the code's (the stage registry's order, names and words)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from pipeline.build.registry import STAGES

ROOT = Path(__file__).resolve().parents[1]
TOP = ("pipeline", "stages", "trainer", "manifests", "tests", "infra", "bench", "docs", ".ci")
# a path into the repo: one of its top folders, then path segments, ending in a file name with a suffix
PATH = re.compile(
    rf"(?<![\w./-])((?:{'|'.join(re.escape(t) for t in TOP)})/[\w./-]*\w\.(?:py|md|yaml|yml|sh|json|png|toml|txt|cfg))"
)
TEMPLATE = re.compile(r"[<>{}*]|NNNNN|NAME")  # a pattern such as tests/<package>/test_<module>.py names no one file


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # the tests' own .py files are left out: their literals name made-up projects' files on purpose
    return [
        ROOT / n
        for n in names
        if Path(n).suffix in (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".json", "")
        and (ROOT / n).is_file()
        and not (n.startswith("tests/") and n.endswith(".py"))
    ]


def test_every_repo_path_named_anywhere_exists():
    missing = []
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in PATH.finditer(text):
            named = match.group(1).rstrip(".")
            if TEMPLATE.search(named) or (ROOT / named).exists():
                continue
            missing.append(f"{path.relative_to(ROOT)}: {named}")
    assert not missing, "paths named but not in the repo:\n" + "\n".join(missing)


def architecture_section(title: str) -> str:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_stage_table_is_the_registry():
    rows = [line.split("|")[1:-1] for line in architecture_section("Stages").splitlines() if line.startswith("| `")]
    table = [(name.strip().strip("`"), folder.strip().strip("`"), does.strip()) for name, folder, _, does in rows]
    assert table == [(s.name, f"work/{s.name}/", s.does) for s in STAGES]


def test_the_module_map_names_every_module_and_no_other():
    section = architecture_section("Layout")
    named = set(re.findall(r"\b((?:pipeline|stages|trainer|manifests)/[\w/]+\.py)\b", section))
    modules = {
        p.relative_to(ROOT).as_posix()
        for top in ("pipeline", "stages", "trainer", "manifests")
        for p in (ROOT / top).rglob("*.py")
        if p.name != "__init__.py"
    }
    assert sorted(modules - named) == [], "modules missing from ARCHITECTURE.md's Layout"
    assert sorted(named - modules) == [], "ARCHITECTURE.md's Layout names modules that do not exist"
