"""``x-request-id``: the caller's when it sends a usable one, else a new random one.

The id is forwarded upstream, returned in the reply's initial metadata and written in the
gateway's and the services' log lines, so one call can be followed across every hop.
"""

from __future__ import annotations

import random

from runtime.calllog import REQUEST_ID_HEADER

HEADER = REQUEST_ID_HEADER

# Longer ids are replaced: they would bloat every log line, and no tracing system needs them.
MAX_LENGTH = 128

# Ids need to be unique, not secret: the Mersenne Twister costs a fraction of a uuid4's syscall.
# random seeds itself from the OS in each process, so workers do not repeat each other's ids.
_random = random.Random()


def new_request_id() -> str:
    """32 random hex digits, as a uuid4 without its dashes."""
    return f"{_random.getrandbits(128):032x}"


def request_id_of(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    """The caller's ``x-request-id``, or a new one when it sent none or one unfit to pass on.

    Unfit: empty, longer than MAX_LENGTH, or not printable ASCII (grpc would refuse to send it on).
    """
    for key, value in metadata or ():
        if key == HEADER:
            if (
                isinstance(value, str)
                and 0 < len(value) <= MAX_LENGTH
                and value.isascii()
                and value.isprintable()
            ):
                return value
            break
    return new_request_id()
