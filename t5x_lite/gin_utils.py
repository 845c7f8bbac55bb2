"""Gin at the edge: the T5X command line, and gin turned into plain objects.

Entry points parse --gin_file (repeatable), --gin.KEY=VALUE and --gin_search_paths
(the repository's gin/ directory is always searched, so includes such as
`include 'models/t5_1_1.gin'` resolve from anywhere), then call the `resolve_*`
functions here, which build the typed configs (TransformerConfig, OptimizerConfig,
ScheduleConfig, RunConfig, the mesh) from the bindings. Nothing below the entry
points reads gin: this module is the only place the library's classes are
registered with it, under the names gin files use (spec.SECTIONS).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Sequence

import gin

from t5x_lite import data
from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError, UserError, fail  # noqa: F401  (fail: for entry points)
from t5x_lite.data import corpora, preference, supervised
from t5x_lite.data.curation.config import CurationConfig
from t5x_lite.inference import chain_of_thought
from t5x_lite.models.configs import TransformerConfig, contradictions
from t5x_lite.runs import run_dir, spec

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


class GinConfigError(ConfigError):
  """A gin file or binding that cannot be parsed or applied."""


def rewrite_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
  """Splits argv into (gin files, bindings, search paths, remaining args).

  `--gin.KEY=VALUE` becomes the binding "KEY = VALUE" (as in T5X); both
  `--flag=value` and `--flag value` spellings are accepted for the file flags.
  """
  files, bindings, search_paths, rest = [], [], [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    if arg.startswith("--gin."):
      key, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise GinConfigError(f"{arg!r}: write gin overrides as --gin.KEY=VALUE.")
      bindings.append(f"{key} = {value}")
      continue
    for flag, target in (("--gin_file", files), ("--gin_bindings", bindings),
                         ("--gin_search_paths", search_paths)):
      if arg == flag:
        if not args:
          raise GinConfigError(f"{flag} needs a value.")
        arg = f"{flag}={args.pop(0)}"
      if arg.startswith(flag + "="):
        value = arg[len(flag) + 1:]
        target.extend(value.split(",") if flag == "--gin_search_paths" else [value])
        break
    else:
      rest.append(arg)
  return files, bindings, search_paths, rest


def parse(files: Iterable[str], bindings: Iterable[str] = (),
          search_paths: Iterable[str] = ()) -> None:
  """Parses gin files and bindings; errors name the file or binding at fault.

  A macro set by `bindings` (e.g. --gin.TRAIN_STEPS=5) that no binding uses is refused:
  gin would silently ignore a mistyped one (--gin.TRAIN_STEP=5).
  """
  gin.clear_config()
  for path in [os.getcwd(), GIN_DIR, *search_paths]:
    gin.add_config_file_search_path(path)
  files, bindings = list(files), list(bindings)
  for path in files:
    if not _findable(path, search_paths):
      raise GinConfigError(f"Gin file {path!r} not found (looked in the working directory, "
                           f"{GIN_DIR} and --gin_search_paths).")
  # gin logs an ERROR for every search path an include is not under before it
  # finds the right one; a real miss still raises below.
  logging.disable(logging.ERROR)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except RecursionError:
    raise GinConfigError(f"gin files {files} include one another in a circle (a file that "
                         "includes itself, directly or through others); remove the "
                         "include that closes it.") from None
  except Exception as error:  # gin raises ValueError, KeyError, SyntaxError, IOError...
    lines = str(error).splitlines()
    if len(lines) > 8:  # a long include chain: the cause and where it was read from
      lines = lines[:4] + ["  ..."] + lines[-3:]
    raise GinConfigError("Bad gin configuration: " + "\n".join(lines)) from None
  finally:
    logging.disable(logging.NOTSET)
  unused = [name for name in _macros_set(bindings) if name not in _macros_used()]
  if unused:
    raise GinConfigError(f"macro {unused[0]} is set but no gin binding uses it (a typo?); "
                         f"macros used here: {sorted(_macros_used())}.")


def _macros_set(bindings: Iterable[str]) -> list[str]:
  """The macros (NAME = value, no configurable) among bindings."""
  keys = [binding.split("=", 1)[0].strip() for binding in bindings if "=" in binding]
  return [key for key in keys if key and "." not in key and "/" not in key
          and not key.startswith(("include ", "import "))]


def _macros_used() -> set[str]:
  """Every macro referenced as %NAME by a binding of the parsed configuration."""
  # gin has no public listing of references; its own iterator over the parsed
  # config is the reliable one (a %NAME inside a string is not a reference).
  return {"/".join(reference.scopes)
          for reference in gin.config.iterate_references(gin.config._CONFIG)
          if reference.selector == "gin.macro"}


def parse_flags(argv: Sequence[str]) -> None:
  """Parses an entry point's whole command line: --gin_file, --gin.KEY=VALUE and
  --gin_search_paths, anything else being an error."""
  files, bindings, search_paths, rest = rewrite_gin_args(argv)
  if rest:
    raise GinConfigError(f"unknown arguments {rest}; use --gin_file, --gin.KEY=VALUE or "
                         "--gin_search_paths.")
  parse(files, bindings, search_paths)


def _findable(path: str, search_paths: Iterable[str]) -> bool:
  roots = ["", os.getcwd(), GIN_DIR, *search_paths]
  return any(os.path.exists(os.path.join(root, path)) for root in roots)



# ------------------------------------------------------------------ gin -> plain objects

# The library's configs under the names gin files use; registered once, here only.
_CONFIGURABLES = {gin_name: gin.external_configurable(cls, name=gin_name)
                  for gin_name, cls in (*spec.SECTIONS.values(),
                                        *spec.OPTIONAL_SECTIONS.values())}
_CONFIGURABLES["create_mesh"] = gin.external_configurable(partitioning.create_mesh,
                                                          name="create_mesh")
_CONFIGURABLES["text_files_corpus"] = gin.external_configurable(corpora.TextFiles,
                                                                name="text_files_corpus")
_CONFIGURABLES["curation"] = gin.external_configurable(CurationConfig, name="curation")
_CONFIGURABLES["supervised_data"] = gin.external_configurable(supervised.SupervisedData,
                                                              name="supervised_data")
_CONFIGURABLES["preference_data"] = gin.external_configurable(preference.PreferenceData,
                                                             name="preference_data")
_CONFIGURABLES["mixture"] = gin.external_configurable(data.WeightedMixture, name="mixture")
_CONFIGURABLES["chain_of_thought"] = gin.external_configurable(
    chain_of_thought.ChainOfThought, name="chain_of_thought")
gin.external_configurable(partitioning.single_device, name="single_device")


def check_required(gin_name: str) -> None:
  """gin does not enforce %gin.REQUIRED reached through a macro, nor on registered
  classes; raises GinConfigError naming what is missing."""
  resolved = gin.get_bindings(gin_name)
  raw = gin.get_bindings(gin_name, resolve_references=False)
  for key, value in resolved.items():
    if value is gin.REQUIRED:
      macro = str(raw[key]).lstrip("%")
      hint = (f"set the macro {macro}, e.g. --gin.{macro}=..." if macro != "gin.REQUIRED"
              else f"bind it, e.g. --gin.{gin_name}.{key}=...")
      raise GinConfigError(f"{gin_name}.{key} is required: {hint}")


def construct(gin_name: str, **overrides):
  """The object that the configurable registered as `gin_name` builds from the bindings
  (and `overrides`, which win over them)."""
  check_required(gin_name)
  try:
    return _CONFIGURABLES[gin_name](**overrides)
  except UserError as error:
    # gin re-raises as a subclass of the error's class that appends "In call to
    # configurable ..."; raise the error's own class with its own (first) line.
    cls = type(error)
    if "ExceptionProxy" in cls.__init__.__qualname__:
      cls = cls.__mro__[1]
    raise cls(str(error).splitlines()[0]) from None
  except TypeError as error:
    if "missing" not in str(error):
      raise  # A bug, not a binding.
    missing = str(error).split("argument")[-1].split("\n")[0].strip(": ")
    raise GinConfigError(f"{gin_name} needs {missing}; bind it in a gin file or with "
                         f"--gin.{gin_name}.NAME=VALUE.") from None


def resolve_model_config() -> TransformerConfig:
  """TransformerConfig from the parsed bindings (defaults for unbound knobs)."""
  return construct("TransformerConfig")


def resolve_train_spec() -> spec.TrainSpec:
  """The run's TrainSpec from the parsed bindings (an optional section, e.g. `lora.*`,
  when any of its knobs is bound)."""
  sections = {name: construct(gin_name) for name, (gin_name, _) in spec.SECTIONS.items()}
  sections.update({name: construct(gin_name)
                   for name, (gin_name, _) in spec.OPTIONAL_SECTIONS.items()
                   if gin.get_bindings(gin_name)})
  init_checkpoint = sections["run"].init_checkpoint
  if init_checkpoint and run_dir.read_record(init_checkpoint) is not None:
    # Fine-tuning: the model is the one the checkpoint was trained with (a model gin file
    # may restate it, and change only what does not change what it computes).
    sections["model"] = checkpoint_model_config(init_checkpoint,
                                                allowed=sections["run"].allow_changes)
  return spec.TrainSpec(**sections)


def register_tasks() -> None:
  """The project's seqio tasks, the `text_files.*` ones reading the files bound as
  `text_files_corpus.patterns`, `curated.*` the corpus `curation.*` makes,
  `supervised` the rows bound as `supervised_data.*`,
  the weighted mixture bound as `mixture.*` and the `preference` pairs bound as
  `preference_data.*` (entry points call this before naming a
  task)."""
  text_files = construct("text_files_corpus") if gin.get_bindings("text_files_corpus") else None
  rows = construct("supervised_data") if gin.get_bindings("supervised_data") else None
  curation = construct("curation") if gin.get_bindings("curation") else None
  data.register_tasks(text_files=text_files, supervised_data=rows, curation=curation)
  if gin.get_bindings("mixture"):
    data.mixtures.register(construct("mixture"))
  if gin.get_bindings("preference_data"):
    preference.register(construct("preference_data"))


def resolve_mesh(devices=None):
  """The device mesh of `create_mesh.*` (gin/meshes/...), over `devices` when given
  (compile_check's compile-only devices) instead of the bound or local ones."""
  return construct("create_mesh") if devices is None else construct("create_mesh",
                                                                     devices=devices)


def model_config(files: Iterable[str], bindings: Iterable[str] = (),
                 search_paths: Iterable[str] = ()) -> TransformerConfig:
  """Parses model gin files (e.g. "models/tiny_causal_decoder.gin") into a TransformerConfig."""
  parse(files, bindings, search_paths)
  return resolve_model_config()


def checkpoint_model_config(checkpoint_path: str, stream=sys.stderr,
                            allowed: Iterable[str] = ()) -> TransformerConfig:
  """The model of a checkpoint's run directory (spec.json), for infer, evaluate and
  fine-tuning.

  TransformerConfig bindings in the parsed gin must agree with it, except the
  knobs that do not change what the parameters compute (precision, layout,
  dropout: models.configs.NON_FUNCTIONAL_KNOBS), which override it. A run
  directory without a record (older runs) takes the model from gin. Knobs named in
  `allowed` (train.allow_changes, e.g. "TransformerConfig.architecture" to continue a
  causal decoder as a prefix decoder) take their gin value too.
  """
  recorded = run_dir.recorded_model(checkpoint_path)
  bound = gin.get_bindings("TransformerConfig")
  if recorded is None:
    if not bound:
      raise GinConfigError(f"{checkpoint_path} has no recorded model ({run_dir.SPEC_FILE}); "
                           "pass the gin file of the model it was trained with.")
    print(f"warning: {checkpoint_path} has no {run_dir.SPEC_FILE}; using the model from gin.",
          file=stream)
    return resolve_model_config()
  contradicted = contradictions(recorded, bound, allowed)
  if contradicted:
    shown = "; ".join(f"{knob}: checkpoint {old!r}, gin {new!r}"
                      for knob, (old, new) in contradicted.items())
    raise GinConfigError(f"the gin configuration contradicts the model {checkpoint_path} was "
                         f"trained with ({shown}); drop the model gin file (the checkpoint's "
                         "own is used) or fix those bindings.")
  return recorded.replace(**bound)  # what is left to override does not contradict it
