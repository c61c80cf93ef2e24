"""What every registered task owes the suite, checked on each with its defaults and on small
settings of its variants: determinism, disjoint splits, a perfect causal oracle, valid
length variants, and a config file that builds it.

``lm`` (real text) has no oracle: no perfect solver of text exists, so the oracle checks run
on the synthetic tasks only, and a test pins which tasks lack one (tests/tasks/test_lm.py
checks its targets directly instead)."""

from pathlib import Path

import pytest
import torch
import yaml

import tasks
from zoo.data import split_task_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "task"

SETTINGS = {
    "assoc_recall": {},
    "assoc_recall-small": {"seq_len": 32, "num_kv_pairs": 8, "vocab_size": 256},
    "copying": {},
    "copying-unpacked": {"packed": False, "seq_len": 50},
    "copying-lookup": {"variant": "lookup"},
    "copying-lookup-unpacked": {"variant": "lookup", "packed": False, "min_len": 6,
                                "max_len": 30, "seq_len": 48, "ngram_len": 2, "answer_len": 4},
    "copying-small-alphabet": {"vocab_size": 7, "min_len": 1, "max_len": 9, "seq_len": 40},
    "induction": {},
    "memorization": {},
    "memorization-small": {"num_keys": 8, "vocab_size": 20, "seq_len": 31},
    "induction-narrow": {"distances": [16]},
    "induction-range": {"seq_len": 33, "min_distance": 4, "max_distance": 9},
    "selective_copying": {},
    "selective_copying-small": {"seq_len": 24, "num_tokens": 5, "vocab_size": 8},
    "state_size": {},
    "state_size-small": {"seq_len": 24, "kv_pairs": [1, 6, 3], "vocab_size": 100},
    "lm": {"max_files": 40, "vocab_size": 512, "seq_len": 64},  # the stdlib, a CPU-test size
}
NO_ORACLE = {"lm"}
ORACLE_SETTINGS = [s for s in SETTINGS if s.split("-")[0] not in NO_ORACLE]
# Tasks of real vectors (no tokens, no vocabulary, no oracle to score 100%): their generators,
# splits and estimators are checked in tests/tasks/test_icl.py.
CONTINUOUS = {"icl_regression", "icl_multitask", "icl_gmm"}


def make(setting: str) -> tasks.Task:
    return tasks.build(setting.split("-")[0], **SETTINGS[setting])


def generate(task: tasks.Task, n: int = 400, seed: int = 0):
    return task.generate(n, torch.Generator().manual_seed(seed))


def test_every_registered_task_is_covered():
    assert {s.split("-")[0] for s in SETTINGS} | CONTINUOUS == set(tasks.names())
    assert {n for n in tasks.names() if tasks.build(n, **SETTINGS.get(n, {})).continuous} \
        == CONTINUOUS


@pytest.mark.parametrize("setting", SETTINGS)
def test_exactly_the_listed_tasks_lack_an_oracle(setting):
    task = make(setting)
    x, _ = generate(task, n=4)
    if setting.split("-")[0] in NO_ORACLE:
        with pytest.raises(NotImplementedError):
            task.oracle(x)
    else:
        assert task.oracle(x).shape == x.shape


@pytest.mark.parametrize("setting", SETTINGS)
def test_deterministic_for_a_seed(setting):
    task = make(setting)
    x1, y1 = generate(task, seed=3)
    x2, y2 = generate(task, seed=3)
    x3, _ = generate(task, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.dtype == y1.dtype == torch.long
    assert x1.shape == y1.shape == (400, task.seq_len)
    assert x1.min() >= 0 and x1.max() < task.vocab_size
    labelled = y1[y1 != tasks.IGNORE]
    assert labelled.min() >= 0 and labelled.max() < task.vocab_size
    assert (y1 != tasks.IGNORE).any(1).all(), "every row carries a target"


@pytest.mark.parametrize("setting", SETTINGS)
def test_splits_are_disjoint(setting):
    task = make(setting)
    train, _ = tasks.make_split(task, 2000, 0, "train")
    val, _ = tasks.make_split(task, 300, 0, "val")
    test, _ = tasks.make_split(task, 300, 0, "test")
    assert tasks.leakage(train, val) == 0 and tasks.leakage(train, test) == 0
    assert tasks.leakage(train, train[:11]) == 11


@pytest.mark.parametrize("setting", ORACLE_SETTINGS)
def test_oracle_scores_100_percent(setting):
    task = make(setting)
    x, y = generate(task)
    counts = tasks.accuracy_counts(task.oracle(x), y)
    assert tasks.rates(counts) == {"acc": 1.0, "exact_match": 1.0}
    assert counts["examples"] == 400


@pytest.mark.parametrize("setting", ORACLE_SETTINGS)
def test_oracle_is_causal(setting):
    """Its answer at a position survives scrambling every later position: the targets follow
    from what a causal model has read."""
    task = make(setting)
    x, y = generate(task, n=200)
    preds = task.oracle(x)
    g = torch.Generator().manual_seed(1)
    for t in torch.linspace(0, task.seq_len - 2, 7).long().tolist():
        noise = torch.randint(0, task.vocab_size, (len(x), task.seq_len - t - 1), generator=g)
        scrambled = torch.cat([x[:, :t + 1], noise], 1)
        sup = y[:, t] != tasks.IGNORE
        assert torch.equal(task.oracle(scrambled)[sup, t], preds[sup, t])


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("factor", [1, 2, 4])
def test_length_variants_are_valid_and_solvable(setting, factor):
    task = make(setting)
    long = task.at_length(factor * task.length)
    assert long.length == factor * task.length
    assert long.at_length(task.length).length == task.length
    x, y = generate(long, n=100)
    assert x.shape == y.shape == (100, long.seq_len)
    if setting in ORACLE_SETTINGS:
        assert tasks.rates(tasks.accuracy_counts(long.oracle(x), y))["exact_match"] == 1.0
    else:
        assert (y != tasks.IGNORE).any(1).all()


@pytest.mark.parametrize("name", tasks.names())
def test_config_builds_the_task(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    cfg_name, knobs, sizes = split_task_config(cfg)
    assert cfg_name == name
    assert set(knobs) == set(tasks.knobs(name)), "the config lists every knob"
    task = tasks.build(name, **knobs)
    for length in sizes.get("eval_lengths") or [task.length]:
        task.at_length(length)


def test_splits_are_generated_on_one_thread_and_the_setting_restored():
    seen = []

    class Probe(tasks.Task):
        def generate(self, n, generator):
            seen.append(torch.get_num_threads())
            return torch.zeros(n, self.seq_len, dtype=torch.long), \
                torch.zeros(n, self.seq_len, dtype=torch.long)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tasks.make_split(Probe(seq_len=4, vocab_size=2), 3, 0, "train")
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
