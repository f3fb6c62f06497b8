"""Synonyms from WordNet 3.0, read straight from its database files (Debian's `wordnet-base`).

The index files (``index.noun`` ...) map a lemma to its synset offsets; the data files
(``data.noun`` ...) hold each synset's words at those byte offsets. Nothing is downloaded.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from ..errors import PlmtuneError

DEFAULT_DIR = "/usr/share/wordnet"
POS = ("noun", "verb", "adj", "adv")
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective syntax markers such as "(a)", "(p)"


class WordNet:
    def __init__(self, directory: str | Path = DEFAULT_DIR):
        self.directory = Path(directory)
        missing = [f"index.{p}" for p in POS if not (self.directory / f"index.{p}").is_file()]
        if missing:
            raise PlmtuneError(f"WordNet is not at {self.directory} (missing {', '.join(missing)}); install "
                               "Debian's wordnet-base (setup.sh does) or set the technique's wordnet_dir.")
        self.index: dict[str, list[tuple[str, int]]] = {}
        for pos in POS:
            for line in (self.directory / f"index.{pos}").read_text(encoding="latin-1").splitlines():
                if line.startswith(" "):
                    continue  # the licence header
                fields = line.split()
                count = int(fields[2])
                self.index.setdefault(fields[0], []).extend((pos, int(o)) for o in fields[-count:])
        self.files = {pos: (self.directory / f"data.{pos}").open("rb") for pos in POS}

    @lru_cache(maxsize=65536)  # noqa: B019 (one WordNet per process; the cache is the point)
    def synonyms(self, word: str) -> tuple[str, ...]:
        """Other lemmas sharing a synset with `word` (lower case, spaces for underscores)."""
        lemma = word.lower().replace(" ", "_")
        found: list[str] = []
        for pos, offset in self.index.get(lemma, ()):
            handle = self.files[pos]
            handle.seek(offset)
            fields = handle.readline().decode("latin-1").split()
            for i in range(int(fields[3], 16)):
                other = _MARKER.sub("", fields[4 + 2 * i]).lower()
                if other != lemma and other not in found:
                    found.append(other)
        return tuple(w.replace("_", " ") for w in found)


@lru_cache(maxsize=4)
def load(directory: str = DEFAULT_DIR) -> WordNet:
    return WordNet(directory)
