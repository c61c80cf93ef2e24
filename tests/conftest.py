import os
import random

import pytest
import torch

# Without CUDA, Triton kernels run only in Triton's interpreter, which Triton selects when
# triton.language is first imported (lightning imports it): so here, before any test module
# imports lightning (tests/layers/test_interpreted_kernels.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega").split()


def _write_corpus(folder, n_docs=40, seed=0, start=0):
    """``n_docs`` text files of random words, each opening with its own name; their texts."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i in range(start, start + n_docs):
        lines = [f"doc {i}"] + [" ".join(rng.choices(WORDS, k=rng.randint(4, 12)))
                                for _ in range(rng.randint(5, 30))]
        texts[f"d{i:03d}.txt"] = "\n".join(lines) + "\n"
    for name, text in texts.items():
        (folder / name).write_text(text)
    return texts


@pytest.fixture
def write_corpus():
    """Writes a small corpus for task=lm (tests/tasks/test_lm.py)."""
    return _write_corpus
