import pytest

from edgecl.core.progress import progress_bar


def test_a_finished_bar_is_printed_and_a_failed_one_is_not(capsys):
    with progress_bar("work", 2, unit="steps") as advance:
        advance()
        advance()
    assert "work" in capsys.readouterr().err
    with pytest.raises(OSError), progress_bar("doomed", 2, unit="steps") as advance:
        advance()
        raise OSError("disk full")
    assert "doomed" not in capsys.readouterr().err
