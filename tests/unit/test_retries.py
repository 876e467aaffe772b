"""Which stage failures the flow retries: transient I/O, never an error the next attempt would meet again."""

from __future__ import annotations

import errno

import pytest

from flows.retries import is_transient


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM])
def test_a_permanent_os_error_is_not_retried(code: int) -> None:
    assert not is_transient(OSError(code, "permanent", "artifacts/teacher/teacher.pt"))


@pytest.mark.parametrize("error", [OSError(errno.EIO, "I/O error"), ConnectionResetError(), TimeoutError(), OSError()])
def test_a_transient_os_error_is_retried(error: OSError) -> None:
    assert is_transient(error)
