"""The layout docs/architecture.md describes is the package's: every module it names
exists, and imports run one way (a module imports from its own folder and the folders
below it), with no circle and no import inside a function but an optional extra."""

import ast
import os
import re

import pytest

from tests.scripts import ROOT

PACKAGE = os.path.join(ROOT, "t5x_lite")
with open(os.path.join(ROOT, "docs", "architecture.md")) as handle:
  ARCHITECTURE = handle.read()
# Folder -> layer, read from the Layers table ("| 6 inference | `inference/` | ...").
LAYERS = {folder.rstrip("/"): int(layer) for layer, folder in re.findall(
    r"^\| (\d+) \w+ \| `([\w/]+)`", ARCHITECTURE, re.M) if folder != "t5x_lite/"}
COMMANDS = max(LAYERS.values()) + 1
OPTIONAL_EXTRAS = ("torch", "transformers", "safetensors", "lm_eval", "matplotlib")


def modules() -> dict[str, str]:
  """{dotted module name: path} of every module of the package."""
  found = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


MODULES = modules()


def layer_of(module: str) -> int:
  parts = module.split(".")
  if parts[-1] == "__main__" or len(parts) < 2 or parts[1] not in LAYERS:
    return COMMANDS  # the package root's modules, and a folder's command line
  return LAYERS[parts[1]]


def imports(path: str):
  """(imported t5x_lite module, line, inside a function) for every import of `path`."""
  def walk(node, in_function):
    for child in ast.iter_child_nodes(node):
      inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, ast.ImportFrom) and child.module:
        for alias in child.names:
          full = f"{child.module}.{alias.name}"
          yield (full if full in MODULES else child.module), child.lineno, in_function
      elif isinstance(child, ast.Import):
        for alias in child.names:
          yield alias.name, child.lineno, in_function
      yield from walk(child, inner)

  with open(path) as handle:
    yield from walk(ast.parse(handle.read()), False)


def test_every_folder_of_the_package_has_a_layer():
  folders = {name for name in os.listdir(PACKAGE)
             if os.path.isfile(os.path.join(PACKAGE, name, "__init__.py"))}
  assert folders == set(LAYERS) and len(LAYERS) == 10


def test_every_module_the_document_names_exists():
  named = set(re.findall(r"`((?:\w+/)*\w+\.py)`", ARCHITECTURE))
  assert len(named) > 20
  for path in named:
    candidates = [os.path.join(PACKAGE, path), os.path.join(ROOT, path)]
    assert any(os.path.isfile(c) for c in candidates), f"docs/architecture.md names {path}"
  for layer_row in re.findall(r"^\| \d \w+ \| `([\w/]+)`[^|]*\| (.*) \|$", ARCHITECTURE, re.M):
    folder, listed = layer_row
    for name in re.findall(r"`(\w+)`", listed):
      here = os.path.join(PACKAGE, "" if folder == "t5x_lite/" else folder, name)
      assert os.path.isfile(here + ".py") or os.path.isdir(here), f"{folder}{name}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers_and_stay_at_the_top_of_the_module(module):
  for imported, line, in_function in imports(MODULES[module]):
    if in_function:
      assert imported.split(".")[0] in OPTIONAL_EXTRAS, (
          f"{module}:{line} imports {imported} inside a function")
    if imported.startswith("t5x_lite.") and imported != "t5x_lite":
      assert layer_of(imported) <= layer_of(module), (
          f"{module} (layer {layer_of(module)}) imports {imported} (layer "
          f"{layer_of(imported)}) from above")


def test_no_two_modules_import_each_other_through_a_circle():
  graph = {module: {imported for imported, _, _ in imports(path) if imported in MODULES}
           for module, path in MODULES.items()}

  def reaches(start, goal, seen):
    for nxt in graph[start]:
      if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
        return True
    return False

  circular = [module for module in graph if reaches(module, module, set())]
  assert not circular
