"""Which files of a directory a code snapshot leaves out: `.gitignore` and `.cpignore` rules.

The common subset of gitignore syntax, in every directory of the tree (a file's rules apply
below the directory it is in): blank lines and `#` comments are skipped; `\\#` and `\\!` escape
a leading `#` or `!`; `!` re-includes what an earlier rule left out (the last matching rule
wins, and `.cpignore` is read after `.gitignore`, so it may re-include); a trailing `/` matches
directories only; a pattern with a `/` elsewhere is relative to its file's directory (a leading
`/` just anchors it), one without matches a name at any depth; `*` and `?` match within one path
segment, `[a-z]` a character class, `**/` any leading directories, `/**` everything inside,
`/**/` zero or more directories. As in git, a file inside a left-out directory cannot be
re-included. `.git/` is always left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILES = (".gitignore", ".cpignore")
ALWAYS_SKIPPED = frozenset({".git"})


@dataclass(frozen=True)
class Rule:
    base: str  # the directory of the file it came from, relative to the root ("" for the root)
    regex: re.Pattern[str]
    negate: bool
    directory_only: bool
    anchored: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.directory_only and not is_dir:
            return False
        if self.base:
            if not path.startswith(self.base + "/"):
                return False
            path = path[len(self.base) + 1 :]
        target = path if self.anchored else path.rpartition("/")[2]
        return self.regex.fullmatch(target) is not None


def _class(pattern: str, start: int) -> tuple[str, int] | None:
    """A `[...]` class starting at `start`, as regex text and the index after it; None if unclosed."""
    end = pattern.find("]", start + 2 if pattern[start + 1 : start + 2] in ("!", "^") else start + 1)
    if end == -1:
        return None
    body = pattern[start + 1 : end]
    if body[:1] in ("!", "^"):
        body = "^" + body[1:]
    return "[" + body.replace("\\", "\\\\") + "]", end + 1


def translate(pattern: str) -> str:
    """A gitignore glob (without `!`, trailing `/` or leading `/`) as a regular expression."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i) and i + 2 == len(pattern) and (i == 0 or pattern[i - 1] == "/"):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (found := _class(pattern, i)) is not None:
            out.append(found[0])
            i = found[1]
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def parse_rule(line: str, base: str = "") -> Rule | None:
    """One line of an ignore file as a Rule; None for blanks and comments."""
    line = line.rstrip("\n\r")
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(line) > len(stripped):
        stripped += " "  # "foo\ " keeps its escaped trailing space
    if not stripped or stripped.startswith("#"):
        return None
    negate = stripped.startswith("!")
    if negate or stripped.startswith(("\\#", "\\!")):  # "!" negates; "\\!" is a literal "!"
        stripped = stripped[1:]
    directory_only = stripped.endswith("/")
    stripped = stripped.rstrip("/")
    if not stripped:
        return None
    anchored = "/" in stripped
    stripped = stripped.lstrip("/")
    regex = re.compile(translate(stripped), re.DOTALL)
    return Rule(base, regex, negate, directory_only, anchored)


def read_rules(directory: Path, base: str) -> list[Rule]:
    """The rules of `directory`'s `.gitignore`, then its `.cpignore` (so these win)."""
    rules: list[Rule] = []
    for name in IGNORE_FILES:
        path = directory / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if (rule := parse_rule(line, base)) is not None:
                    rules.append(rule)
    return rules


def ignored(path: str, is_dir: bool, rules: list[Rule]) -> bool:
    """Whether `path` (relative to the root, `/`-separated) is left out: the last match decides."""
    if path.rpartition("/")[2] in ALWAYS_SKIPPED:
        return True
    verdict = False
    for rule in rules:
        if rule.matches(path, is_dir):
            verdict = not rule.negate
    return verdict
