"""test_engine.py's old import path for the tiny models, which now live in llmos.userland.testing."""
from llmos.userland.testing import make_tiny_bert, make_tiny_llama  # noqa: F401
