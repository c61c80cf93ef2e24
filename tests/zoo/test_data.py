"""The DataModule's eval lengths are in the task's own length unit (tasks.Task.length)."""

import tasks
from zoo.data import TaskDataModule


def test_copying_evaluates_at_string_lengths():
    task = tasks.build("copying")  # packed rows of 220 tokens, strings of 5 to 20 symbols
    dm = TaskDataModule(task, num_train=32, num_val=8, num_test=8, batch_size=8,
                        eval_lengths=[10, 40])
    assert dm.eval_lengths == [20, 10, 40], "the trained length (max_len) comes first"
    dm.setup()
    assert dm._splits["train"][0].shape == (32, 220)
    widths = [next(iter(loader))[0].shape[1] for loader in dm.test_dataloader()]
    assert widths == [43, 23, 83], "one string of exactly that length per row"


def test_the_trained_length_comes_first_wherever_it_is_listed():
    task = tasks.build("copying")  # trained at string length 20
    dm = TaskDataModule(task, num_train=8, num_val=8, num_test=8, eval_lengths=[10, 20, 40])
    assert dm.eval_lengths == [20, 10, 40] and dm.eval_names[0] == "len=20"


def test_other_tasks_count_sequence_length():
    dm = TaskDataModule(tasks.build("induction"), num_train=8, num_val=8, num_test=8,
                        eval_lengths=[128])
    assert dm.eval_lengths == [64, 128]


def test_eval_variants_become_test_sets():
    narrow = tasks.build("induction", distances=[16])
    dm = TaskDataModule(narrow, num_train=64, num_val=8, num_test=8, eval_lengths=[128])
    assert dm.eval_names == ["len=64", "len=128", "ood"]
    assert 16 not in dm.eval_tasks["ood"].support
    diverse = tasks.build("induction")  # every distance of the length: nothing is unseen
    assert TaskDataModule(diverse, num_train=8, num_val=8, num_test=8).eval_names == ["len=64"]
