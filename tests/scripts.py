"""Importing the repository's scripts (tools/, experiments/) in tests, which are files
outside the package rather than modules on sys.path."""

import importlib.util
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load_script(relative_path: str):
  """The script at `relative_path` (from the repository root) as a module, loaded once;
  its folder goes on sys.path as when Python runs it (scripts import their siblings)."""
  folder = os.path.abspath(os.path.dirname(os.path.join(ROOT, relative_path)))
  if folder not in sys.path:
    sys.path.append(folder)
  name = "script_" + relative_path.replace(os.sep, "_").replace("/", "_").removesuffix(".py")
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
  return sys.modules[name]
