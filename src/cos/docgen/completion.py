"""Shell completion scripts for bash and zsh, rendered from the argument parser.

Walking the parser (not a hand-kept list) keeps completions in step with the
commands: a new flag completes as soon as it exists. Commands and options hidden
from --help are not offered.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

BASH_FILE = "cos.bash"
ZSH_FILE = "_cos"
HEADER = "Generated from the argument parser (src/cos/cli/verbs.py) by `make docs`; do not edit."


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    takes_arg: bool
    metavar: str = ""
    choices: tuple[str, ...] = ()
    files: bool = False
    dirs: bool = False
    repeat: bool = False


@dataclass(frozen=True)
class Positional:
    name: str
    help: str
    nargs: str | int | None
    files: bool = False


@dataclass
class Command:
    name: str
    help: str
    options: list[Option] = field(default_factory=list)
    positionals: list[Positional] = field(default_factory=list)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a
    return None


def _command(name: str, help: str, parser: argparse.ArgumentParser) -> Command:
    cmd = Command(name, help)
    for a in parser._actions:
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._SubParsersAction):
            continue
        text = " ".join(str(a.help or "").split())
        metavar = str(a.metavar or a.dest.upper())
        is_path = a.type is Path
        if a.option_strings:
            takes = a.nargs != 0
            choices = tuple(str(c) for c in a.choices or ())
            if metavar == "BOOL":
                choices = ("true", "false")
            dirs = is_path and (metavar in ("DIR", "CONFIG_DIR") or a.dest.endswith("_dir"))
            cmd.options.append(
                Option(
                    tuple(a.option_strings),
                    text,
                    takes,
                    metavar if takes else "",
                    choices,
                    files=is_path and not dirs,
                    dirs=dirs,
                    repeat=isinstance(a, argparse._AppendAction),
                )
            )
        else:
            cmd.positionals.append(Positional(metavar, text, a.nargs, files=is_path))
    return cmd


def model(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """The top level (global options) and the listed subcommands, in --help order."""
    top = _command("", parser.description or "", parser)
    sub = _subparsers(parser)
    commands = []
    if sub is not None:
        for choice in sub._choices_actions:
            commands.append(_command(choice.dest, choice.help or "", sub.choices[choice.dest]))
    return top, commands


# -- bash ------------------------------------------------------------------------------


def _words(items: list[str]) -> str:
    return " ".join(items)


def bash(parser: argparse.ArgumentParser) -> str:
    top, commands = model(parser)
    global_with_arg = [f for o in top.options if o.takes_arg for f in o.flags]
    lines = [
        f"# bash completion for cos. {HEADER}",
        "# shellcheck shell=bash",
        "",
        "_cos() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmd="" i w',
        '    [[ $COMP_CWORD -gt 0 ]] && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        '        case "$w" in',
    ]
    if global_with_arg:
        lines.append(f"            {'|'.join(global_with_arg)}) ((i++)) ;;")
    lines += [
        "            -*) ;;",
        '            *) cmd="$w"; break ;;',
        "        esac",
        "    done",
        '    local opts="" values="" files=0 dirs=0',
        '    case "$cmd" in',
    ]
    for cmd in [top, *commands]:
        label = f"{cmd.name}" if cmd.name else '""'
        flags = [f for o in cmd.options for f in o.flags]
        lines.append(f"        {label})")
        lines.append(f'            opts="{_words(flags)}"')
        arg_cases = []
        for o in cmd.options:
            if not o.takes_arg:
                continue
            pat = "|".join(o.flags)
            if o.choices:
                arg_cases.append(f'                {pat}) values="{_words(list(o.choices))}" ;;')
            elif o.dirs:
                arg_cases.append(f"                {pat}) dirs=1 ;;")
            elif o.files:
                arg_cases.append(f"                {pat}) files=1 ;;")
            else:
                arg_cases.append(f"                {pat}) return 0 ;;")
        if arg_cases:
            lines += ['            case "$prev" in', *arg_cases, "            esac"]
        lines.append("            ;;")
    lines += [
        "    esac",
        '    if [[ -n "$values" ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$values" -- "$cur")',
        "    elif ((dirs)); then",
        '        mapfile -t COMPREPLY < <(compgen -d -- "$cur")',
        "    elif ((files)); then",
        '        mapfile -t COMPREPLY < <(compgen -f -- "$cur")',
        '    elif [[ "$cur" == -* ]]; then',
        '        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")',
        '    elif [[ -z "$cmd" ]]; then',
        f'        mapfile -t COMPREPLY < <(compgen -W "{_words([c.name for c in commands])}"'
        ' -- "$cur")',
        "    fi",
        "    return 0",
        "}",
        "complete -o default -F _cos cos",
        "",
    ]
    return "\n".join(lines)


# -- zsh -------------------------------------------------------------------------------


def _q(text: str) -> str:
    """Single-quote text for zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _esc(text: str, special: str = "[]:") -> str:
    """Backslash-escape what _arguments (brackets, colons) or _describe (colons) parse."""
    for c in "\\" + special:
        text = text.replace(c, "\\" + c)
    return text


def _zsh_option(o: Option) -> str:
    """One _arguments spec per flag: `(aliases)--flag=[help]:METAVAR:action`."""
    action = ""
    if o.takes_arg:
        what = ""
        if o.choices:
            what = "(" + " ".join(o.choices) + ")"
        elif o.dirs:
            what = "_files -/"
        elif o.files:
            what = "_files"
        action = f":{_esc(o.metavar)}:{what}"
    if o.repeat:
        prefix = "*"
    elif len(o.flags) > 1:
        prefix = "(" + " ".join(o.flags) + ")"
    else:
        prefix = ""
    specs = []
    for f in o.flags:
        eq = "=" if o.takes_arg and f.startswith("--") else ""
        specs.append(_q(f"{prefix}{f}{eq}[{_esc(o.help, '[]')}]{action}"))
    return " ".join(specs)


def _zsh_positional(p: Positional) -> str:
    action = "_files" if p.files else " "
    msg = _esc(p.name)
    if p.nargs in ("*", "+"):
        return _q(f"*:{msg}:{action}")
    if p.nargs == "?":
        return _q(f"::{msg}:{action}")
    return _q(f":{msg}:{action}")


def zsh(parser: argparse.ArgumentParser) -> str:
    top, commands = model(parser)
    lines = [
        "#compdef cos",
        f"# zsh completion for cos. {HEADER}",
        "",
        "_cos() {",
        '    local curcontext="$curcontext" state line ret=1',
        "    typeset -A opt_args",
        "    _arguments -C \\",
        *[f"        {_zsh_option(o)} \\" for o in top.options],
        "        '1: :->command' \\",
        "        '*:: :->args' && ret=0",
        "    case $state in",
        "        command)",
        "            local -a commands",
        "            commands=(",
        *[f"                {_q(_esc(c.name, ':') + ':' + _esc(c.help, ':'))}" for c in commands],
        "            )",
        "            _describe -t commands 'cos command' commands && ret=0",
        "            ;;",
        "        args)",
        '            curcontext="${curcontext%:*:*}:cos-$words[1]:"',
        "            case $words[1] in",
    ]
    for c in commands:
        specs = [_zsh_option(o) for o in c.options] + [_zsh_positional(p) for p in c.positionals]
        lines.append(f"                {c.name})")
        lines.append("                    _arguments \\")
        lines += [f"                        {s} \\" for s in specs[:-1]]
        lines.append(f"                        {specs[-1]} && ret=0")
        lines.append("                    ;;")
    lines += [
        "            esac",
        "            ;;",
        "    esac",
        "    return ret",
        "}",
        "",
        '_cos "$@"',
        "",
    ]
    return "\n".join(lines)
