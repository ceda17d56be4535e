"""The h2load report and log parsers, and the gRPC framing of request bodies (no load is run)."""

from __future__ import annotations

import pytest

from bench.loadgen import LoadError, grpc_frame, parse_log, parse_summary, percentile

# h2load 1.52 (Debian's nghttp2-client), 20000 unary gRPC calls, as printed on stdout.
REPORT = """\
starting benchmark...
spawning thread #0: 4 total client(s). 20000 total requests
Application protocol: h2c
progress: 10% done
progress: 100% done

finished in 10.27s, 1946.93 req/s, 152.48KB/s
requests: 20000 total, 20000 started, 20000 done, 19998 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 19998 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.53MB (1603944) total, 1.58MB (1621200) headers (space savings 45.96%), 429.65KB (439956) data
                     min         max         mean         sd        +/- sd
time for request:     3.20ms     37.96ms     16.38ms      1.90ms    95.00%
time for connect:      113us       319us       199us        87us    75.00%
time to 1st byte:     5.06ms     18.31ms     11.26ms      5.82ms    50.00%
req/s           :     486.75      487.10      486.93        0.15    50.00%
"""


def test_parse_summary() -> None:
    summary = parse_summary(REPORT)
    assert summary.seconds == pytest.approx(10.27)
    assert summary.req_per_s == pytest.approx(1946.93)
    assert (summary.total, summary.started, summary.done) == (20000, 20000, 20000)
    assert (summary.succeeded, summary.failed, summary.errored, summary.timeout) == (19998, 2, 0, 0)
    assert summary.status_2xx == 19998
    assert (summary.header_bytes, summary.data_bytes) == (1621200, 439956)


def test_parse_summary_of_a_short_run_in_milliseconds() -> None:
    summary = parse_summary(REPORT.replace("finished in 10.27s", "finished in 139.31ms"))
    assert summary.seconds == pytest.approx(0.13931)


def test_parse_summary_without_a_report_says_what_h2load_printed() -> None:
    with pytest.raises(LoadError, match=r"connect to 127\.0\.0\.1 failed"):
        parse_summary("starting benchmark...\nclient could not connect to 127.0.0.1 failed\n")


def test_parse_log_keeps_successes_and_counts_failures() -> None:
    log = "1764300000000001\t200\t812\n1764300000000002\t-1\t90\n\n1764300000000003\t200\t1030\n"
    assert parse_log(log) == ([812, 1030], 1)


def test_parse_log_rejects_rows_it_does_not_know() -> None:
    with pytest.raises(LoadError, match="unexpected h2load log row"):
        parse_log("garbage\n")


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.5, 50.0), (0.99, 99.0), (0.07, 7.0), (1.0, 100.0), (0.001, 1.0)],
)
def test_percentile_is_nearest_rank(fraction: float, expected: float) -> None:
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert percentile(values, fraction) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_grpc_frame_is_flag_length_message() -> None:
    assert grpc_frame(b"\x08\x65") == b"\x00\x00\x00\x00\x02\x08\x65"
    assert grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
