"""What every stage entry point shares: bad params or bad input end the stage with one clear line."""
from __future__ import annotations

import sys
from typing import Callable

from models.common.params import ParamsError


def guarded(body: Callable[[list[str] | None], None], argv: list[str] | None, input_errors: tuple = ()) -> int:
    """Run a stage body; return 0, or print ``error: <message>`` (the message names the file, the record or
    key, and what is wrong) and return 2 for bad params, 1 for bad input."""
    try:
        body(argv)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except input_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
