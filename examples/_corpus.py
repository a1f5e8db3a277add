"""A labelled real-text corpus without downloads: docstrings of installed packages, labelled by library.

Docstrings are read from the packages' source files with :mod:`ast` (nothing is
imported, so building the corpus takes about a second even for transformers).
Texts have realistic, very uneven lengths (one-liners to long parameter
lists), which is what makes padding choices matter.

Example::

    from examples._corpus import build_corpus

    corpus = build_corpus(per_label=100)
    print(len(corpus.texts), corpus.label_names)        # 400 ['torch', 'numpy', 'transformers', 'lightning']
    train, val = corpus.split(0.8)
"""

from __future__ import annotations

import ast
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

LIBRARIES = ("torch", "numpy", "transformers", "lightning")
# Docstrings shorter than this are mostly "Alias for ..." one-liners with nothing to learn from.
MIN_CHARS = 60
# Long docstrings are cut here: enough text for a classifier, bounded tokenizer cost.
MAX_CHARS = 1200
# Source files read per library at most (spread evenly over the package): bounds the build time
# on huge packages (parsing all of transformers takes >10 s on 2 cores).
MAX_FILES = 90


@dataclass
class Corpus:
    """Texts, integer labels and the library name of each label."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def split(self, train_fraction: float = 0.8) -> tuple[Corpus, Corpus]:
        """Train / validation split (the corpus is already shuffled)."""
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")
        cut = int(len(self.texts) * train_fraction)
        return (Corpus(self.texts[:cut], self.labels[:cut], self.label_names),
                Corpus(self.texts[cut:], self.labels[cut:], self.label_names))

    def __len__(self) -> int:
        return len(self.texts)


def package_docstrings(package: str, *, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS,
                       max_files: int = MAX_FILES) -> list[str]:
    """Docstrings of the modules, classes and functions in ``package``'s source (sorted, deduplicated)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package!r} is not installed (or is not a package)")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and not p.name.startswith("test")
                   and p.stat().st_size < 200_000)
    seen: set[str] = set()
    out: list[str] = []
    step = max(1, len(files) // max_files)
    for path in files[::step][:max_files]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = " ".join(doc.split())[:max_chars]
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def build_corpus(libraries: tuple[str, ...] = LIBRARIES, per_label: int = 150, seed: int = 0) -> Corpus:
    """A shuffled, balanced corpus: ``per_label`` docstrings from each library, label = library index."""
    rng = random.Random(seed)
    rows: list[tuple[str, int]] = []
    for label, lib in enumerate(libraries):
        docs = package_docstrings(lib)
        if len(docs) < per_label:
            raise ValueError(f"{lib} has only {len(docs)} usable docstrings, asked for {per_label}")
        rows.extend((text, label) for text in rng.sample(docs, per_label))
    rng.shuffle(rows)
    return Corpus([t for t, _ in rows], [y for _, y in rows], list(libraries))


if __name__ == "__main__":
    corpus = build_corpus(per_label=50)
    lengths = sorted(len(t) for t in corpus.texts)
    print(f"{len(corpus)} texts from {corpus.label_names}; chars min/median/max = "
          f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}")
