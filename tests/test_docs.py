"""The docs hold together: README.md and docs/*.md against the repository and the code.

* every relative link resolves to a file, and a `#anchor` to a heading of
  its target (GitHub's slug rules);
* every repository path named in code (`raycluster/…`, `docs/…`, …) exists;
* every `raycluster COMMAND` shown parses: its `--help` runs, each option
  named is one of its options, and each command line in a code block parses
  whole;
* every settings key (`edge.max_window`) and environment name
  (`RAYCLUSTER_SHARD__CUSHION`) named exists, and docs/configuration.md
  names every settings field.

No Ray, no Redis. A failure lists every problem as `file:line: what`.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from raycluster.cli import build_parser, main
from raycluster.config import TierSettings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH_ROOTS = ("raycluster", "jobs", "configs", "benchmarks", "tests", "docs")
GENERATED = ("benchmarks/results/",)  # written by the benchmarks; not in the repository
OTHER_ENV = {"RAYCLUSTER_CONFIG"}  # the CLI's config file; not a settings field

_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w-]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(PATH_ROOTS)})/[\w./-]*)")
_ENV = re.compile(r"\bRAYCLUSTER_[A-Z0-9_]+")
_OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a settings section (`X` or `X | None`), else None."""
    union = isinstance(annotation, types.UnionType) or get_origin(annotation) is Union
    for a in (annotation, *(get_args(annotation) if union else ())):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


_SECTIONS = {
    name: model
    for name, f in TierSettings.model_fields.items()
    if (model := _section(f.annotation)) is not None
}
_SETTING = re.compile(rf"({'|'.join(_SECTIONS)})\.(\w+)")


class Doc:
    """One markdown file: its prose (code blocks blanked) and its code blocks, by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.relative_to(ROOT).as_posix()
        prose: list[str] = []
        self.blocks: list[tuple[int, str, str]] = []  # (line number, language, text)
        lang: str | None = None
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fence = _FENCE.match(line)
            if fence:
                lang = fence.group(2) if lang is None else None
                prose.append("")
            elif lang is not None:
                self.blocks.append((number, lang, line))
                prose.append("")
            else:
                prose.append(line)
        self.prose = "\n".join(prose)

    def where(self, offset: int) -> str:
        """`file:line` of a position in `prose`."""
        return f"{self.name}:{self.prose.count(chr(10), 0, offset) + 1}"

    def spans(self) -> Iterator[tuple[str, str]]:
        """(`file:line`, text) of each inline code span (they may cross lines)."""
        for m in _CODE_SPAN.finditer(self.prose):
            yield self.where(m.start()), " ".join(m.group(1).split())

    def code(self) -> Iterator[tuple[str, str]]:
        """Inline code spans, then every line of every code block."""
        yield from self.spans()
        for number, _, line in self.blocks:
            yield f"{self.name}:{number}", line

    def anchors(self) -> set[str]:
        """The `#anchor` of each heading, as GitHub makes them."""
        seen: dict[str, int] = {}
        out = set()
        for line in self.prose.splitlines():
            m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
            slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
        return out


DOC = {d.name: d for d in map(Doc, DOCS)}


def _report(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problem(s) in the docs:\n" + "\n".join(problems)


def test_links_resolve() -> None:
    problems = []
    for doc in DOC.values():
        for m in _LINK.finditer(doc.prose):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.path.parent / file).resolve() if file else doc.path
            if not path.exists() or ROOT not in path.parents:
                problems.append(f"{doc.where(m.start())}: broken link {target}: no such file")
                continue
            if anchor:
                name = path.relative_to(ROOT).as_posix()
                if name not in DOC:
                    problems.append(f"{doc.where(m.start())}: link {target}: anchor in a non-doc")
                elif anchor not in DOC[name].anchors():
                    problems.append(
                        f"{doc.where(m.start())}: broken link {target}: no heading "
                        f"#{anchor} in {name}"
                    )
    _report(problems)


def test_named_paths_exist() -> None:
    problems = []
    for doc in DOC.values():
        for where, text in doc.code():
            for m in _PATH.finditer(text):
                path = m.group(1).rstrip(".")
                if not path.startswith(GENERATED) and not (ROOT / path).exists():
                    problems.append(f"{where}: no such file or directory: {path}")
    _report(problems)


def _help(command: str) -> str | None:
    """`raycluster COMMAND --help`, or None when it does not exit 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main([command, "--help"])
    return out.getvalue() if code == 0 else None


def _command_lines(doc: Doc) -> Iterator[tuple[str, list[str]]]:
    """(`file:line`, argv after `raycluster`) of each command line in a shell code block."""
    for number, lang, line in doc.blocks:
        if lang not in ("", "bash", "sh", "shell", "console") or "raycluster " not in line:
            continue
        if lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        words = shlex.split(line.rstrip("\\"), comments=True)
        start = 0
        for i, word in enumerate([*words, "|"]):
            if word in ("|", "&&", "||", ";"):
                if words[start : start + 1] == ["raycluster"]:
                    yield f"{doc.name}:{number}", words[start + 1 : i]
                start = i + 1


def test_commands_shown_parse() -> None:
    problems = []
    helps: dict[str, str | None] = {}
    for doc in DOC.values():
        shown = [(w, t.split()[1:]) for w, t in doc.spans() if t.startswith("raycluster ")]
        for where, argv in [*shown, *_command_lines(doc)]:
            if not argv or not re.fullmatch(r"[a-z]+", argv[0]):
                continue  # a placeholder such as COMMAND
            command = argv[0]
            if command not in helps:
                helps[command] = _help(command)
            text = helps[command]
            if text is None:
                problems.append(f"{where}: `raycluster {command} --help` fails")
                continue
            for option in _OPTION.findall(" ".join(argv)):
                if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                    problems.append(f"{where}: `raycluster {command}` has no option {option}")
    for doc in DOC.values():
        for where, argv in _command_lines(doc):
            try:
                build_parser().parse_args(argv)
            except (Exception, SystemExit) as e:
                problems.append(f"{where}: `raycluster {shlex.join(argv)}` does not parse: {e}")
    _report(problems)


def _env_known(name: str) -> bool:
    if name in OTHER_ENV:
        return True
    field = name.removeprefix("RAYCLUSTER_").lower()
    section, nested, sub = field.partition("__")
    if nested:
        return section in _SECTIONS and sub in _SECTIONS[section].model_fields
    return field in TierSettings.model_fields or field in _SECTIONS["redis"].model_fields


def test_settings_named_exist() -> None:
    problems = []
    for doc in DOC.values():
        for where, text in doc.spans():
            m = _SETTING.fullmatch(text)
            if m and m.group(2) not in _SECTIONS[m.group(1)].model_fields:
                problems.append(f"{where}: no setting {text}")
        for where, text in doc.code():
            problems += [
                f"{where}: no setting {n}" for n in _ENV.findall(text) if not _env_known(n)
            ]
    _report(problems)


def test_configuration_page_names_every_field() -> None:
    """A section has a `## name` part that names each of its fields; other fields are named."""
    doc = DOC["docs/configuration.md"]
    parts = {p.partition("\n")[0].strip(): p for p in re.split(r"^## ", doc.prose, flags=re.M)}
    problems = []
    for name in TierSettings.model_fields:
        if name not in _SECTIONS and f"`{name}`" not in doc.prose:
            problems.append(f"{name} is not named")
    for section, model in _SECTIONS.items():
        if section not in parts:
            problems.append(f"section {section}: no heading '## {section}'")
            continue
        for name in model.model_fields:
            if f"`{name}`" not in parts[section]:
                problems.append(f"{section}.{name} is not named under '## {section}'")
    _report([f"{doc.name}: setting {p}" for p in problems])
