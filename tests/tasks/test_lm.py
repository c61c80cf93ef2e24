"""lm: real text from local files, split by document, BPE trained locally, cached on disk.

A small corpus of generated text files stands in for the standard library (which
tests/tasks/test_every_task.py covers at a small size)."""

import random

import pytest
import torch

import tasks
from tasks import lm

@pytest.fixture
def corpus(tmp_path, write_corpus):
    texts = write_corpus(tmp_path / "text")
    return tmp_path / "text", texts


def build(folder, tmp_path, **kw):
    kw = {"data_files": str(folder / "*.txt"), "vocab_size": 300, "seq_len": 16,
          "cache_dir": str(tmp_path / "cache"), **kw}
    return tasks.build("lm", **kw)


def documents(task):
    """The documents of each split, decoded from its token stream."""
    c = task.corpus()
    tok = c.tokenizer()
    eot = tok.token_to_id(lm.EOT)
    out = {}
    for split, stream in c.streams.items():
        ids = stream.tolist()
        assert ids[-1] == eot, "every document ends with the end-of-document token"
        docs, cur = [], []
        for i in ids:
            if i == eot:
                docs.append(tok.decode(cur))
                cur = []
            else:
                cur.append(i)
        out[split] = docs
    return out


def test_windows_are_stream_slices_with_next_token_targets(corpus, tmp_path):
    task = build(corpus[0], tmp_path)
    for split in tasks.SPLITS:
        x, y = tasks.make_split(task, 200, 0, split)
        assert x.shape == y.shape == (200, 16) and x.dtype == y.dtype == torch.long
        assert torch.equal(y[:, :-1], x[:, 1:]), "targets: the next token, everywhere"
        stream = task.corpus().streams[split].long()
        slices = stream.unfold(0, 17, 1)  # [positions, T + 1]: every window of the stream
        rows = torch.cat([x, y[:, -1:]], 1)
        assert (rows[:, None, :] == slices[None]).all(-1).any(1).all(), \
            f"every {split} window is a slice of the {split} stream"


def test_deterministic_for_a_seed_and_across_rebuilds(corpus, tmp_path, monkeypatch):
    task = build(corpus[0], tmp_path)
    x1, _ = tasks.make_split(task, 300, 5, "train")
    x2, _ = tasks.make_split(task, 300, 5, "train")
    x3, _ = tasks.make_split(task, 300, 6, "train")
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    first = task.corpus().streams
    monkeypatch.setattr(lm, "_CORPORA", {})
    fresh = build(corpus[0], tmp_path, cache_dir=str(tmp_path / "other-cache"))
    again = fresh.corpus().streams  # loaded, split, tokenizer trained and encoded anew
    assert all(torch.equal(first[s], again[s]) for s in tasks.SPLITS)


def test_splits_are_disjoint_documents(corpus, tmp_path):
    folder, texts = corpus
    (folder / "copy.txt").write_text(texts["d000.txt"])  # a duplicate shares its split
    docs = documents(build(folder, tmp_path))
    assert all(docs[s] for s in tasks.SPLITS), "every split holds documents"
    seen = [d for s in tasks.SPLITS for d in docs[s]]
    assert sorted(seen) == sorted([*texts.values(), texts["d000.txt"]]), "each file once"
    sets = {s: set(docs[s]) for s in tasks.SPLITS}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"]
                or sets["val"] & sets["test"])
    assert 25 <= len(docs["train"]) <= 39


def test_adding_files_keeps_every_document_in_its_split(corpus, tmp_path, write_corpus):
    folder, _ = corpus
    before = documents(build(folder, tmp_path))
    write_corpus(folder, n_docs=20, seed=1, start=100)
    after = documents(build(folder, tmp_path))
    for split in tasks.SPLITS:
        assert set(before[split]) <= set(after[split])


def test_leakage_check_applies(corpus, tmp_path):
    task = build(corpus[0], tmp_path)
    train, _ = tasks.make_split(task, 2000, 0, "train")
    val, _ = tasks.make_split(task, 300, 0, "val")
    assert tasks.leakage(train, val) == 0
    assert tasks.leakage(train, train[:7]) == 7


def test_tokenizer_and_streams_are_cached_by_corpus_and_settings(corpus, tmp_path, monkeypatch):
    folder, _ = corpus
    task = build(folder, tmp_path)
    streams = task.corpus().streams
    cached = task.corpus().path
    assert cached.parent == tmp_path / "cache"
    assert {p.name for p in cached.iterdir()} == {"tokenizer.json", "tokens.pt", "stats.json"}
    assert task.corpus().tokenizer().get_vocab_size() == 300

    def fail(*a, **k):
        raise AssertionError("rebuilt despite the cache")

    monkeypatch.setattr(lm, "_CORPORA", {})  # a new process: only the disk cache remains
    monkeypatch.setattr(lm, "train_tokenizer", fail)
    monkeypatch.setattr(lm, "load_texts", fail)
    again = build(folder, tmp_path).corpus()
    assert again.path == cached
    assert all(torch.equal(streams[s], again.streams[s]) for s in tasks.SPLITS)
    assert build(folder, tmp_path, seq_len=64).corpus().path == cached, "seq_len: same tokens"

    monkeypatch.undo()
    other = build(folder, tmp_path, vocab_size=280).corpus()
    assert other.path != cached and other.tokenizer().get_vocab_size() == 280
    with (folder / "d005.txt").open("a") as f:
        f.write("an edit\n")
    assert build(folder, tmp_path).corpus().path not in (cached, other.path)


def test_nothing_is_written_outside_the_cache(corpus, tmp_path, monkeypatch):
    folder, _ = corpus
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(folder.iterdir())
    tasks.make_split(build(folder, tmp_path), 10, 0, "test")
    assert sorted(folder.iterdir()) == before and not list(cwd.iterdir())
    assert {p.name for p in tmp_path.iterdir()} == {"text", "cwd", "cache"}


@pytest.mark.parametrize("kind", ["file", "directory", "glob", "list"])
def test_data_files_takes_a_file_a_directory_a_glob_or_a_list(corpus, tmp_path, kind):
    folder, texts = corpus
    spec = {"file": str(folder / "d003.txt"), "directory": str(folder),
            "glob": str(folder / "d00*.txt"),
            "list": [str(folder / "d001.txt"), str(folder / "d02*.txt")]}[kind]
    want = {"file": ["d003.txt"], "directory": sorted(texts),
            "glob": [f"d00{i}.txt" for i in range(10)],
            "list": ["d001.txt"] + [f"d02{i}.txt" for i in range(10)]}[kind]
    assert [f.name for f in build(folder, tmp_path, data_files=spec).files()] == want


def test_default_corpus_is_the_standard_library_capped():
    task = tasks.build("lm")
    files = task.files()
    assert len(files) == task.max_files == 200
    assert files == sorted(files, key=str) and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    everything = tasks.build("lm", max_files=None).files()
    assert len(everything) > 200 and set(files) <= set(everything)
    assert files[0] == everything[0], "an evenly spaced subset starting at the first file"


def test_sample_by_paragraph_splits_one_file(tmp_path):
    rng = random.Random(0)
    text = "\n\n".join(f"paragraph {i}: " + " ".join(str(rng.randrange(1000)) for _ in range(30))
                         for i in range(60))
    (tmp_path / "one.txt").write_text(text)
    task = tasks.build("lm", data_files=str(tmp_path / "one.txt"), sample_by="paragraph",
                       vocab_size=300, seq_len=8, cache_dir=str(tmp_path / "cache"))
    docs = documents(task)
    assert sum(len(d) for d in docs.values()) == 60 and all(docs.values())


@pytest.mark.parametrize("make,message", [
    (lambda d: {"data_files": str(d / "missing")}, r"data_files='.*missing' matches no file"),
    (lambda d: {"data_files": str(d / "*.nothing")}, "data_files=.* matches no file"),
    (lambda d: {"data_files": str(d / "emptydir")}, "data_files=.* matches no file"),
    (lambda d: {"data_files": str(d / "blank")}, "data_files=.* matches only empty files"),
    (lambda d: {"data_files": [str(d / "text"), str(d / "typo")]}, "data_files='.*typo'"),
    (lambda d: {"sample_by": "page"}, "sample_by must be one of"),
    (lambda d: {"vocab_size": 100}, "vocab_size must be >= 258"),
    (lambda d: {"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction and test_fraction"),
    (lambda d: {"max_files": 2}, "max_files"),
    (lambda d: {"seq_len": 0}, "seq_len"),
])
def test_bad_knobs_fail_at_build_naming_the_knob(corpus, tmp_path, make, message):
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    with pytest.raises(ValueError, match=message):
        build(corpus[0], tmp_path, **make(tmp_path))
    assert not (tmp_path / "cache").exists(), "nothing loaded before the knobs are valid"


def test_too_few_documents_for_the_splits_names_the_knobs(tmp_path, write_corpus):
    write_corpus(tmp_path / "few", n_docs=3)
    task = build(tmp_path / "few", tmp_path)
    with pytest.raises(ValueError, match="no document fell in the .* split .*max_files"):
        tasks.make_split(task, 4, 0, "train")


def test_a_split_shorter_than_a_window_names_seq_len(corpus, tmp_path):
    task = build(corpus[0], tmp_path, seq_len=100_000)
    with pytest.raises(ValueError, match="fewer than seq_len \\+ 1"):
        tasks.make_split(task, 4, 0, "val")
