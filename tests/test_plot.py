"""The plots' layout: a confusion matrix's right answers on its diagonal."""

from types import SimpleNamespace

from edgecl.eval.plot import confusion_rows


def test_confusion_rows_and_columns_put_right_answers_on_the_diagonal():
    # folders in name order, one the bundle does not know (kiwi); the bundle's classes (the columns) in the
    # order it learned them, one without a folder (lion)
    report = SimpleNamespace(
        per_class={"apple": None, "kiwi": None, "zebra": None},
        labels=["zebra", "lion", "apple", "unknown"],
        confusion=[[0, 1, 5, 1], [2, 0, 0, 3], [4, 0, 0, 0]],
    )
    rows, columns, counts = confusion_rows(report)
    assert rows == ["zebra", "apple", "kiwi"] and columns == ["zebra", "apple", "lion", "unknown"]
    assert counts == [[4, 0, 0, 0], [0, 5, 1, 1], [2, 0, 0, 3]]
    assert [counts[i][i] for i in range(2)] == [4, 5]  # each known class's right answers
