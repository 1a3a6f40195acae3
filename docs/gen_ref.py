"""MkDocs hook (mkdocs.yml ``hooks:``): the generated reference pages, made in memory at every build.

- ``reference/config.md`` — every config key of :data:`repalign.config.SCHEMA` (type, default, allowed
  values, description), the per-arm keys :data:`repalign.config.ARM_KEYS` and the default arms;
- ``reference/cli.md`` — every ``repalign`` subcommand with its options, from
  :func:`repalign.cli.build_parser` (argparse), so the page is the ``--help`` text.

Nothing is written into ``docs/``: a key or option added in the code appears at the next build.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # building from a checkout without an install
    sys.path.insert(0, str(SRC))


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type_name(types: tuple) -> str:
    names = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "mapping"}
    return " or ".join(dict.fromkeys(names.get(t, getattr(t, "__name__", str(t))) for t in types))


def _choices(check: Any) -> list[str] | None:
    """The options of a ``config._choice(...)`` check (read from its closure), else None."""
    for cell in getattr(check, "__closure__", None) or ():
        v = cell.cell_contents
        if isinstance(v, tuple) and v and all(isinstance(o, str) for o in v):
            return list(v)
    return None


def config_page() -> str:
    from repalign.config import ARM_KEYS, DEFAULT_ARMS, REFUSED_ALIASES, SCHEMA

    out = ["# Config keys", "",
           "Generated from `repalign.config.SCHEMA` at every docs build. A config is YAML (or a mapping "
           "passed to `repalign.train`); every key not given takes its default; `key=value` overrides on "
           "the command line use the dotted names below. Unknown keys are refused with a 'did you mean' line.", ""]
    sections: dict[str, list[tuple[str, Any]]] = {}
    for key, spec in SCHEMA.items():
        sections.setdefault(key.split(".")[0] if "." in key else "top level", []).append((key, spec))
    for sec, items in sections.items():
        out += [f"## {sec}", "", "| key | type | default | description |", "|---|---|---|---|"]
        for key, spec in items:
            t = _type_name(spec.types) + (" or null" if spec.nullable else "")
            ch = _choices(spec.check)
            doc = spec.doc or ""
            if ch:
                doc = (doc + "; " if doc else "") + "one of " + ", ".join(f"`{c}`" for c in ch)
            default = "`null`" if spec.default is None else f"`{spec.default!r}`"
            out.append(f"| `{key}` | {t} | {_md(default)} | {_md(doc) or '—'} |")
        out.append("")
    out += ["## arms", "",
            "`arms` maps each arm name to its settings (`objective`, `same_as`, `init_perturb`, `init_seed`, "
            "`data_seed`, `label_groups`, `label_map`, …; see [Arms and controls](../arms.md)). An arm may set these keys by their short "
            "names:", "", "| arm key | config key |", "|---|---|"]
    out += [f"| `{a}` | `{k}` |" for a, k in ARM_KEYS.items()]
    out += ["", "and may not set (they are shared by all arms): "
            + ", ".join(f"`{a}` (`{k}`)" for a, k in REFUSED_ALIASES.items()) + ".", "",
            "Default arms: " + ", ".join(f"`{a}` (objective `{s['objective']}`)" for a, s in DEFAULT_ARMS.items()) + ".",
            ""]
    return "\n".join(out)


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _option_rows(p: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | description |", "|---|---|"]
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(a.option_strings) if a.option_strings else a.dest
        if a.option_strings and a.nargs != 0 and a.metavar is not False:
            name += " " + (a.metavar if isinstance(a.metavar, str) else a.dest.upper())
        extra = []
        if a.choices is not None and not isinstance(a.choices, dict):
            extra.append("choices: " + ", ".join(f"`{c}`" for c in a.choices))
        if a.default not in (None, False, argparse.SUPPRESS) and a.option_strings:
            extra.append(f"default: `{a.default}`")
        text = (a.help or "").replace("%(prog)s", p.prog).replace("%%", "%")
        rows.append(f"| `{_md(name)}` | {_md(text)}{' (' + '; '.join(extra) + ')' if extra else ''} |")
    return rows


def cli_page() -> str:
    from repalign.cli import build_parser

    p = build_parser()
    out = ["# Command line", "", "Generated from the argparse parser (`repalign.cli.build_parser`) at every "
           "docs build; `repalign COMMAND --help` prints the same.", "", "```text", p.format_usage().strip(), "```",
           "", _md(p.description or ""), ""] + _option_rows(p) + [""]
    for name, sp in _subparsers(p).items():
        out += [f"## repalign {name}", "", "```text", sp.format_usage().strip(), "```", "",
                _md(sp.description or ""), ""] + _option_rows(sp) + [""]
    return "\n".join(out)


PAGES = {"reference/config.md": config_page, "reference/cli.md": cli_page}


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
