"""The plots' layout: a confusion matrix's right answers on its diagonal."""

from types import SimpleNamespace

from edgecl.eval.plot import confusion_rows


def test_confusion_rows_follow_the_columns_then_the_unknown_classes():
    # folders in name order; the bundle's classes (the columns) in the order it learned them
    report = SimpleNamespace(
        per_class={"apple": None, "kiwi": None, "zebra": None},
        labels=["zebra", "apple", "unknown"],
        confusion=[[0, 5, 1], [2, 0, 3], [4, 0, 0]],
    )
    rows, counts = confusion_rows(report)
    assert rows == ["zebra", "apple", "kiwi"]
    assert counts == [[4, 0, 0], [0, 5, 1], [2, 0, 3]]
    assert [counts[i][i] for i in range(2)] == [4, 5]  # each known class's right answers
