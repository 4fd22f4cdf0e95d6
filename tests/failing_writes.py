"""train.py with one of its file writes failing, for tests/test_checkpoints.py:

    python tests/failing_writes.py K ERRNO train.py [overrides ...]

runs train.py as `python train.py [overrides ...]` would, except that its K-th torch.save
writes a few bytes and then fails with OSError(errno.ERRNO), as a full disk (ENOSPC) or a
failing one (EIO) would. The fault lives here, not in the code under test."""
import errno
import os
import runpy
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    fail_at, code = int(sys.argv[1]), getattr(errno, sys.argv[2])
    real_save, calls = torch.save, [0]

    def failing_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == fail_at:
            f.write(b"half a file")
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *args, **kwargs)

    torch.save = failing_save
    sys.argv = sys.argv[3:]
    sys.path.insert(0, str(REPO))
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
