"""The in-context tasks of real vectors (tasks/icl.py): generators, layouts, splits, counts,
and the reference estimators on cases whose answer is known."""

import pytest
import torch

import tasks

SMALL = {  # CPU-test sizes of each task and its variants
    "icl_regression": {"d": 4, "num_examples": 12},
    "icl_regression-paired": {"d": 4, "num_examples": 12, "layout": "paired", "noise": 0.3},
    "icl_multitask": {"d": 4, "num_tasks": 2, "examples_per_task": 7, "correlation": 0.5},
    "icl_gmm": {"d": 4, "num_examples": 12},
    "icl_gmm-alternating": {"d": 4, "num_examples": 9, "layout": "alternating",
                            "loss_fn": "logistic"},
}


def make(setting, **kw):
    return tasks.build(setting.split("-")[0], **{**SMALL[setting], **kw})


def draw(task, n=300, seed=0):
    return task.generate(n, torch.Generator().manual_seed(seed))


def scores(task, n=4000, seed=0):
    """Every estimator's rates on ``n`` prompts (``<name>_<metric>[@n=<i>]``)."""
    x, y, mask = draw(task, n, seed)
    counts = {}
    for name, pred in task.baselines(x, mask).items():
        counts.update(task.counts(pred, y, mask, prefix=f"{name}_", slices=True))
    return task.rates(counts)


@pytest.mark.parametrize("setting", SMALL)
def test_deterministic_shapes_and_dtypes(setting):
    task = make(setting)
    x1, y1, m1 = draw(task, seed=3)
    x2, y2, m2 = draw(task, seed=3)
    x3, _, _ = draw(task, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(m1, m2)
    assert not torch.equal(x1, x3)
    T = task.seq_len
    assert x1.shape == (300, T, task.d + 1) and y1.shape == (300, T, 1) and m1.shape == (300, T)
    assert x1.dtype == y1.dtype == torch.float32 and m1.dtype == torch.bool
    assert task.io == {"d_in": task.d + 1, "d_out": 1} and task.continuous
    assert T == 2 * task.examples and task.vocab_size == 0
    assert not m1[:, 1::2].any(), "demonstration tokens are never scored"
    assert m1.any(1).all(), "every prompt scores a query"


@pytest.mark.parametrize("setting", SMALL)
def test_layout_queries_hold_x_demonstrations_the_label(setting):
    task = make(setting)
    x, y, _ = draw(task)
    d = task.d
    queries, demos = x[:, 0::2], x[:, 1::2]
    assert (queries[..., d] == 0).all(), "a query shows no label"
    if task.layout == "paired":
        assert torch.equal(demos[..., :d], queries[..., :d])
    else:
        assert (demos[..., :d] == 0).all()
    shown, target = demos[..., d], y[:, 0::2, 0]
    if setting.startswith("icl_gmm"):  # a label shown is the true one; a hidden one reads 0
        assert ((shown == target) | (shown == 0)).all() and set(target.unique().tolist()) \
            == {-1.0, 1.0}
        hidden = float((shown == 0).float().mean())
        assert abs(hidden - task.missing) < 0.05
    else:
        assert torch.equal(shown, target)


def test_multitask_scores_only_the_last_segment_whose_task_differs():
    task = make("icl_multitask", correlation=0.0, noise=0.0)
    x, y, mask = draw(task, n=200)
    m = task.examples_per_task
    scored = mask[0, 0::2]
    assert scored.tolist() == [False] * m + [True] * m and (mask == mask[:1]).all()
    # each segment is an exact linear map of its own: least squares on it recovers it
    X, Y = x[:, 0::2, :task.d].double(), y[:, 0::2, 0].double()
    w = [torch.linalg.lstsq(X[:, k * m:(k + 1) * m], Y[:, k * m:(k + 1) * m, None]).solution
         for k in range(2)]
    assert torch.allclose(X[:, m:] @ w[1], Y[:, m:, None], atol=1e-4)
    assert not torch.allclose(X[:, m:] @ w[0], Y[:, m:, None], atol=1e-1)


@pytest.mark.parametrize("setting", SMALL)
def test_splits_are_disjoint_and_leakage_counts_equal_rows(setting):
    task = make(setting)
    train = tasks.make_split(task, 500, 0, "train")[0]
    val = tasks.make_split(task, 100, 0, "val")[0]
    assert tasks.leakage(train, val) == 0
    assert tasks.leakage(train, train[:11]) == 11


@pytest.mark.parametrize("setting", SMALL)
def test_counts_add_up_over_batches(setting):
    """Micro averages: the rates of summed counts of two halves are those of the whole."""
    task = make(setting)
    x, y, mask = draw(task, n=64)
    pred = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    whole = task.counts(pred, y, mask, slices=True)
    halves = [task.counts(pred[s], y[s], mask[s], slices=True)
              for s in (slice(0, 20), slice(20, 64))]
    summed = {k: halves[0][k] + halves[1][k] for k in whole}
    assert set(halves[0]) == set(whole)
    for k, v in task.rates(whole).items():
        assert task.rates(summed)[k] == pytest.approx(v)
    rates = task.rates(whole)
    assert task.monitor[0] in rates and all(m in rates for m in task.metrics)
    assert {k for k in rates if "@n=" in k} == {f"{task.monitor[0]}@n={i}"
                                               for i in range(task.examples)
                                               if mask[0, 2 * i]}


def test_regression_mse_is_relative_to_the_prior():
    """Predicting 0 without noise scores E[y^2] / E|w|^2 = 1, whatever the prior's scale."""
    for prior in ("gaussian", "standard", "sphere"):
        task = make("icl_regression", prior=prior)
        x, y, mask = draw(task, n=4000)
        rates = task.rates(task.counts(torch.zeros_like(y), y, mask))
        assert rates["mse"] == pytest.approx(1.0, abs=0.05), prior
        assert rates["loss"] == pytest.approx(task.d * task.s2, rel=0.05)


def test_least_squares_is_exact_without_noise_from_d_examples():
    task = make("icl_regression")  # d 4, noise 0
    r = scores(task, n=500)
    for n in range(task.d, task.num_examples):
        assert r[f"lstsq_mse@n={n}"] < 1e-8 and r[f"ridge_mse@n={n}"] < 1e-8
    assert r[f"lstsq_mse@n={task.d - 1}"] > 0.05  # an underdetermined system is not solved
    assert r["lstsq_mse@n=0"] == pytest.approx(1.0, abs=0.1)  # nothing seen: predicts 0


def test_ridge_beats_least_squares_with_noise_and_the_gradient_step_matches_its_theory():
    task = make("icl_regression", noise=0.5, num_examples=16)
    r = scores(task, n=6000)
    d, s2, noise2 = task.d, task.s2, 0.25
    for n in (1, 3, 8, 15):
        assert r[f"ridge_mse@n={n}"] < r[f"lstsq_mse@n={n}"]
        assert r[f"ridge_mse@n={n}"] <= r[f"gd_mse@n={n}"] + 0.02
        # E err = 1 - eta n + noise^2 / (d s^2) with eta the best step (module docstring)
        eta = s2 / (s2 * (n + d + 1) + noise2)
        expected = 1 - eta * n + noise2 / (d * s2)
        assert r[f"gd_mse@n={n}"] == pytest.approx(expected, rel=0.06)
        assert r[f"avg_mse@n={n}"] > r[f"gd_mse@n={n}"]
        # one step for every n is never better than the best step for each n (on average)
        assert r[f"gd_shared_mse@n={n}"] >= r[f"gd_mse@n={n}"] - 0.03


def test_multitask_estimators_on_the_query_segment_ignore_the_other_tasks():
    task = make("icl_multitask", correlation=0.0, examples_per_task=8)
    r = scores(task, n=2000)
    m, d = task.examples_per_task, task.d
    for n in range(m + d, 2 * m):  # d or more examples of the query's own task
        assert r[f"ridge_task_mse@n={n}"] < 1e-8
        assert r[f"ridge_mse@n={n}"] > 0.1  # pooled over an unrelated task
    assert r[f"gd_task_mse@n={m}"] == pytest.approx(1.0, abs=0.1)  # none of its own yet
    assert r["gd_task_mse"] < r["gd_mse"]
    one = scores(make("icl_multitask", correlation=1.0), n=2000)  # one task: pooling helps
    assert one["ridge_mse"] < one["ridge_task_mse"] and one["gd_mse"] < one["gd_task_mse"]


def test_mixture_estimators_use_the_unlabelled_demonstrations():
    task = make("icl_gmm", d=8, num_examples=24, missing=0.75, mu_norm=1.5)
    r = scores(task, n=4000)
    assert r["sup_acc@n=0"] == pytest.approx(0.5, abs=0.03)  # no label yet: a coin
    assert r["em10_acc"] > r["sup_acc"] + 0.01
    assert r["sup_acc@n=23"] > 0.75
    full = scores(make("icl_gmm", d=8, num_examples=24, missing=0.0), n=2000)
    assert full["em1_acc"] == pytest.approx(full["sup_acc"], abs=0.01)  # nothing to pseudo-label


@pytest.mark.parametrize("setting", SMALL)
def test_estimators_are_causal(setting):
    """An estimator's prediction at a query uses only the tokens before it."""
    task = make(setting)
    x, _, mask = draw(task, n=50)
    before = task.baselines(x, mask)
    t = 2 * (task.examples // 2)  # a query in the middle
    scrambled = x.clone()
    scrambled[:, t:] = torch.randn(scrambled[:, t:].shape,
                                   generator=torch.Generator().manual_seed(5))
    scrambled[:, t, :task.d] = x[:, t, :task.d]  # the query's own x stays
    scrambled[:, t, task.d] = 0
    after = task.baselines(scrambled, mask)
    for name in before:
        torch.testing.assert_close(after[name][:, t], before[name][:, t], msg=name)


@pytest.mark.parametrize("setting", SMALL)
def test_length_variants_count_examples(setting):
    task = make(setting)
    longer = task.at_length(2 * task.length)
    assert longer.length == 2 * task.length and longer.seq_len > task.seq_len
    assert longer.at_length(task.length) == task
    x, y, mask = draw(longer, n=10)
    assert x.shape[1] == longer.seq_len


@pytest.mark.parametrize("knob,value,message", [
    ("d", 0, "d must be an int >= 1"),
    ("layout", "interleaved", "layout must be one of alternating, paired"),
    ("noise", -1.0, "noise must be a finite number >= 0"),
    ("prior", "laplace", "prior must be one of gaussian, standard, sphere"),
    ("vocab_size", 10, "unknown knob"),
    ("seq_len", 10, "unknown knob"),
])
def test_bad_knobs_are_named(knob, value, message):
    with pytest.raises(ValueError, match=message):
        tasks.build("icl_regression", **{knob: value})


@pytest.mark.parametrize("name,knob,value,message", [
    ("icl_multitask", "correlation", 1.5, "correlation must be a number in"),
    ("icl_multitask", "num_tasks", 0, "num_tasks must be an int >= 1"),
    ("icl_gmm", "missing", 1.0, r"missing must be a number in \[0, 1\)"),
    ("icl_gmm", "mu_norm", 0.0, "mu_norm must be a finite number > 0"),
    ("icl_gmm", "loss_fn", "hinge", "loss_fn must be one of mse, logistic"),
])
def test_bad_knobs_of_the_others_are_named(name, knob, value, message):
    with pytest.raises(ValueError, match=message):
        tasks.build(name, **{knob: value})
