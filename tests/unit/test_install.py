"""What the installation must bring beside the imports that would work without it."""

from __future__ import annotations

import os

from kafka.record import default_records, util


def test_kafka_python_checksums_record_batches_in_c() -> None:
    """kafka-python checksums each batch it produces with CRC-32C, in pure Python unless the `crc32c` package is
    installed (2.9x the CPU of producing, bench/producer_crc.py); the batches it builds use the C one, which gives the
    pure Python one's checksums."""
    assert util.crc32c_c is not None, "the crc32c package is missing: `make .venv/.installed` installs it"
    assert default_records.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value
    for size in (0, 1, 7, 64, 4096):
        data = memoryview(os.urandom(size))
        assert default_records.calc_crc32c(data) == util.crc32c_py(data)
