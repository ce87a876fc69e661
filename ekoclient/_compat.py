"""What differs between the Python versions the SDK supports (3.10 to 3.13).

Python 3.10's ``asyncio.wait_for`` raises ``asyncio.TimeoutError``, which only became the
built-in ``TimeoutError`` in 3.11; catching the tuple is right on every version.
"""

from __future__ import annotations

import asyncio

ASYNC_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)
