"""The local S3 store's own checks, before any server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpoints.exceptions import SelfhealError
from flows.local.object_store import SeaweedFS


@pytest.mark.parametrize("bad", ["b", "Lake", "-lake", "lake-", "my_lake", "a" * 64, "a..b", "192.168.0.1", "xn--lake"])
def test_a_bucket_name_s3_refuses_is_an_error_at_once(tmp_path: Path, bad: str) -> None:
    # Without the check the gateway refused the name on every try and the start waited 120 s.
    with pytest.raises(SelfhealError, match="bucket"):
        SeaweedFS(tmp_path, bucket=bad)


def test_names_s3_takes_are_taken(tmp_path: Path) -> None:
    for good in ("selfheal", "lake", "my-lake.v2", "a" * 63):
        assert SeaweedFS(tmp_path, bucket=good).bucket == good  # constructing starts nothing
