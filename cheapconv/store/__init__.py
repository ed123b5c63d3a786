"""Files: atomic writes, the safe self-describing model format, and "file or zoo name" decided once."""

from __future__ import annotations

from .files import DiskFullError, atomic_save, atomic_write, check_writable, ensure_free_space
from .graph_vocab import NotDescribable
from .modelfile import describe_file, load, read_recipe, save, versions
from .rebuild import rebuild_from_recipe, teacher_from_recipe
from .resolve import create_model, is_model_file, resolve_model

__all__ = [
    "DiskFullError", "NotDescribable", "atomic_save", "atomic_write", "check_writable", "create_model",
    "describe_file", "ensure_free_space", "is_model_file", "load", "read_recipe", "rebuild_from_recipe",
    "resolve_model", "save", "teacher_from_recipe", "versions",
]
