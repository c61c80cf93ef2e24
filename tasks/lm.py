"""Language modelling on real text from local files; the metric is perplexity.

The corpus is a list of local text files: by default the Python standard library's own
sources (``sysconfig.get_paths()["stdlib"]``, every ``*.py`` outside site-packages, sorted),
present on every machine, so nothing is downloaded; ``data_files`` points at your own (a
file, a directory, a glob, or a list of them). ``max_files`` keeps an evenly spaced subset of
the sorted files, so the default trains on a CPU in minutes.

    files --datasets "text" builder--> documents --hash of content--> train / val / test
          --BPE (tokenizers, trained on train only)--> one token stream per split
          (documents joined by an end-of-document token)

- Documents are what ``sample_by`` says: a file (``document``), a paragraph or a line, the
  rows of the ``datasets`` text builder. Each goes to a split by a hash of its text, so splits
  are disjoint, deterministic, stable when files are added, and identical documents (empty
  ``__init__.py`` files, say) always share a split.
- ``generate(n, generator)`` draws ``n`` windows of ``seq_len + 1`` tokens at uniform offsets
  of the split's stream: inputs the first ``seq_len``, next-token targets at every position.
  ``for_split`` chooses the stream (``tasks.make_split`` calls it); at other lengths
  (``at_length``) the windows are longer, from the same streams.
- Perplexity is ``exp`` of the mean token negative log-likelihood over every position of
  every window (positions near a window's start see little context).

Caching: the trained tokenizer and the token streams are stored under
``cache_dir/<key>/`` (default: the system temp dir's ``zoo-lm``), the key a hash of the files
(path, size, modification time) and every setting that changes them, so a repeated run loads
them in a second; the ``datasets`` library's arrow files go to ``cache_dir/datasets``.
Nothing is written next to the data or into the working directory.

There is no oracle: text has no perfect causal solver.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import ClassVar

import torch

from .base import SPLITS, Task, register_task

SAMPLE_BY = ("document", "paragraph", "line")
EOT = "<|endoftext|>"  # id 0: ends every document
_VERSION = 1  # bump when the cached artefacts change meaning
_CORPORA: dict[str, "Corpus"] = {}  # this process's loaded corpora, by cache key


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A tokenised corpus: the token stream of each split and where its cache lives."""
    path: Path  # cache_dir/<key>: tokenizer.json, tokens.pt, stats.json
    streams: dict[str, torch.Tensor]  # split -> [tokens] int32
    stats: dict

    def tokenizer(self):
        from tokenizers import Tokenizer
        return Tokenizer.from_file(str(self.path / "tokenizer.json"))


@register_task("lm")
@dataclasses.dataclass(frozen=True)
class LanguageModel(Task):
    metrics: ClassVar[tuple[str, ...]] = ("ppl", "loss", "acc")
    monitor: ClassVar[tuple[str, str]] = ("ppl", "min")
    seq_len: int = 64
    vocab_size: int = 2048
    data_files: str | tuple[str, ...] | None = None
    max_files: int | None = 200
    sample_by: str = "document"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    cache_dir: str | None = None

    _split = "train"  # not a field (no annotation), so not a knob: set by for_split

    def __post_init__(self) -> None:
        if isinstance(self.data_files, (list, tuple)):  # configs give lists; frozen wants tuples
            object.__setattr__(self, "data_files", tuple(str(f) for f in self.data_files))
        super().__post_init__()

    def validate(self) -> None:
        if self.seq_len < 1:
            raise ValueError(f"lm: seq_len must be >= 1, got seq_len={self.seq_len}")
        if self.vocab_size < 258:
            raise ValueError(f"lm: vocab_size must be >= 258 (256 byte tokens, the "
                             f"end-of-document token, a merge), got vocab_size={self.vocab_size}")
        if self.sample_by not in SAMPLE_BY:
            raise ValueError(f"lm: sample_by must be one of {SAMPLE_BY}, got {self.sample_by!r}")
        if self.max_files is not None and self.max_files < 3:
            raise ValueError(f"lm: max_files must be >= 3 (a document per split) or null, got "
                             f"max_files={self.max_files}")
        v, t = self.val_fraction, self.test_fraction
        if not (0 < v < 1 and 0 < t < 1 and v + t < 1):
            raise ValueError(f"lm: val_fraction and test_fraction must be in (0, 1) with a sum "
                             f"below 1, got val_fraction={v}, test_fraction={t}")
        files = self.files()
        if not any(f.stat().st_size for f in files):
            raise ValueError(f"lm: data_files={self._spec()} matches only empty files "
                             f"({len(files)}); point task.data_files at some text")

    def _spec(self) -> str:
        return "null (the Python standard library)" if self.data_files is None \
            else repr(self.data_files)

    def files(self) -> list[Path]:
        """The corpus files, sorted, after ``max_files``; a spec that matches no file fails."""
        if self.data_files is None:
            root = Path(sysconfig.get_paths()["stdlib"])
            files = _walk(root, suffix=".py", skip={"site-packages", "dist-packages"})
        else:
            specs = (self.data_files,) if isinstance(self.data_files, str) else self.data_files
            files = []
            for spec in specs:
                found = _expand(spec)
                if not found:
                    raise ValueError(f"lm: data_files={spec!r} matches no file; give a file, a "
                                     f"directory or a glob, e.g. task.data_files=/path/*.txt")
                files += found
            files = sorted(set(files), key=str)
        k = self.max_files
        if k is not None and len(files) > k:
            files = [files[i * len(files) // k] for i in range(k)]  # evenly spaced
        return files

    def for_split(self, split: str) -> "LanguageModel":
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS}")
        view = copy.copy(self)  # the same knobs, validated already
        object.__setattr__(view, "_split", split)
        return view

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        stream = self.corpus().streams[self._split]
        T = self.seq_len
        if len(stream) < T + 1:
            raise ValueError(f"lm: the {self._split} split holds {len(stream)} tokens, fewer "
                             f"than seq_len + 1 = {T + 1}; give more text (data_files, "
                             f"max_files), a larger {self._split}_fraction or a shorter seq_len")
        starts = torch.randint(0, len(stream) - T, (n,), generator=generator)
        windows = stream[starts[:, None] + torch.arange(T + 1)].long()  # [N, T + 1]
        return windows[:, :-1], windows[:, 1:]

    def corpus(self) -> Corpus:
        """The tokenised corpus: from this process's memory, else the disk cache, else built
        (and cached)."""
        files = self.files()
        settings = {"version": _VERSION, "vocab_size": self.vocab_size,
                    "sample_by": self.sample_by, "val_fraction": self.val_fraction,
                    "test_fraction": self.test_fraction,
                    "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:24]
        if key not in _CORPORA:
            path = self._cache_root() / key
            if not (path / "tokens.pt").exists():
                self._build(files, path)
            streams = torch.load(path / "tokens.pt")
            stats = json.loads((path / "stats.json").read_text())
            _CORPORA[key] = Corpus(path, streams, stats)
        return _CORPORA[key]

    def _cache_root(self) -> Path:
        return Path(self.cache_dir or Path(tempfile.gettempdir()) / "zoo-lm").expanduser()

    def _build(self, files: list[Path], path: Path) -> None:
        """Load, split, train the tokenizer, encode; written to a temp dir then renamed, so
        parallel runs never see half a cache."""
        texts = load_texts(files, self.sample_by, self._cache_root() / "datasets")
        docs: dict[str, list[str]] = {s: [] for s in ("train", "val", "test")}
        for text in texts:
            if text:
                docs[self._split_of(text)].append(text)
        for split, d in docs.items():
            if not d:
                raise ValueError(
                    f"lm: no document fell in the {split} split ({sum(map(len, docs.values()))} "
                    f"documents from data_files={self._spec()}); give more files (data_files, "
                    f"max_files), a finer sample_by (paragraph, line) or change the fractions")
        tok = train_tokenizer(docs["train"], self.vocab_size)
        eot = tok.token_to_id(EOT)
        streams = {}
        for split, d in docs.items():
            ids = [i for enc in tok.encode_batch(d) for i in (*enc.ids, eot)]
            streams[split] = torch.tensor(ids, dtype=torch.int32)
        stats = {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
                 "tokenizer_vocab": tok.get_vocab_size(),
                 "documents": {s: len(d) for s, d in docs.items()},
                 "tokens": {s: len(t) for s, t in streams.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            tok.save(str(tmp / "tokenizer.json"))
            torch.save(streams, tmp / "tokens.pt")
            (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
            os.rename(tmp, path)
        except OSError:
            if not (path / "tokens.pt").exists():  # not a parallel run that got there first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _split_of(self, text: str) -> str:
        u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2 ** 64
        if u < self.val_fraction:
            return "val"
        return "test" if u < self.val_fraction + self.test_fraction else "train"


def _walk(root: Path, suffix: str = "", skip: set[str] = frozenset()) -> list[Path]:
    """Files under ``root`` ending in ``suffix``, sorted, not descending into hidden folders,
    ``__pycache__`` or ``skip``."""
    out = []
    for d, subdirs, names in os.walk(root):
        subdirs[:] = [s for s in subdirs
                      if not s.startswith(".") and s != "__pycache__" and s not in skip]
        out += [Path(d, f) for f in names
                if f.endswith(suffix) and not f.startswith(".") and Path(d, f).is_file()]
    return sorted(out, key=str)


def _expand(spec: str) -> list[Path]:
    """A file, a directory (every file under it) or a glob (``**`` recursive) -> files."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return _walk(p)
    if p.is_file():
        return [p]
    return sorted((Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file()),
                  key=str)


def load_texts(files: list[Path], sample_by: str, cache_dir: Path) -> list[str]:
    """The rows of the ``datasets`` "text" builder over local files, in file order; offline,
    its arrow cache in ``cache_dir``."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before datasets is imported
    import datasets
    # local files: no "Downloading data" bars or info lines for a read from disk
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    ds = datasets.load_dataset("text", data_files=[str(f) for f in files], split="train",
                               sample_by=sample_by, keep_linebreaks=True,
                               encoding_errors="replace", cache_dir=str(cache_dir))
    return ds["text"]


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2's scheme): every byte is a token, so any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok
