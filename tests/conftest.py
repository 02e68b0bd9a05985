"""Shared by every test: lzn_hf's own cache (the evaluation's CNN judges) goes to a temporary folder, never the
user's Hugging Face cache; subprocesses launched by the tests inherit it."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_lzn_cache(tmp_path_factory):
    previous = os.environ.get("LZN_HF_CACHE")
    os.environ["LZN_HF_CACHE"] = str(tmp_path_factory.mktemp("lzn_hf_cache"))
    yield
    if previous is None:
        os.environ.pop("LZN_HF_CACHE", None)
    else:
        os.environ["LZN_HF_CACHE"] = previous
