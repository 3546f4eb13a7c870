"""Shell completion scripts for bash and zsh (`nsvisor completion bash|zsh`).

The scripts are generated from the CLI's own argparse parser (commands and
each command's options), so they cannot drift from it. Container names come
from the daemon at completion time through the hidden `nsvisor __complete
names` (one name per line; nothing, quickly, when the daemon is down), with
the --socket given on the command line being completed.

Pure: `commands(parser)` and the two renderers take no I/O.
"""

from __future__ import annotations

import argparse

# Commands whose positional arguments are container names.
NAME_COMMANDS = (
    "logs", "exec", "inspect", "stop", "start", "restart", "rm", "kill",
    "attach", "stats", "top", "update",
)  # fmt: skip


def commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """{command: [its options]} for every visible command."""
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            visible = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                if name not in visible:
                    continue  # hidden (__complete)
                out[name] = sorted(o for a in sub._actions for o in a.option_strings)
    return out


def bash(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    cases = "\n".join(
        f'        {name}) opts="{" ".join(opts)}" ;;' for name, opts in sorted(cmds.items())
    )
    names = "|".join(c for c in NAME_COMMANDS if c in cmds)
    return f"""# nsvisor bash completion: eval "$(nsvisor completion bash)"
_nsvisor_names() {{
    nsvisor ${{_nsvisor_socket:+--socket "$_nsvisor_socket"}} __complete names 2>/dev/null
}}
_nsvisor() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local cmd="" i _nsvisor_socket=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --socket) _nsvisor_socket="${{COMP_WORDS[i+1]}}"; ((i++)) ;;
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        if [[ "$prev" == --socket ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
        else
            COMPREPLY=($(compgen -W "{" ".join(sorted(cmds))} --socket" -- "$cur"))
        fi
        return
    fi
    local opts=""
    case "$cmd" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case "$cmd" in
        {names}) COMPREPLY=($(compgen -W "$(_nsvisor_names)" -- "$cur")) ;;
        cp)
            COMPREPLY=($(compgen -W "$(_nsvisor_names | sed 's/$/:/')" -- "$cur") $(compgen -f -- "$cur"))
            compopt -o nospace 2>/dev/null ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
}}
complete -F _nsvisor nsvisor
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    cases = "\n".join(
        f"        {name}) opts=({' '.join(opts)}) ;;" for name, opts in sorted(cmds.items())
    )
    names = "|".join(c for c in NAME_COMMANDS if c in cmds)
    return f"""#compdef nsvisor
# nsvisor zsh completion: eval "$(nsvisor completion zsh)" (after compinit),
# or save as _nsvisor in a directory of $fpath.
_nsvisor_names() {{
    nsvisor ${{sock:+--socket $sock}} __complete names 2>/dev/null
}}
_nsvisor() {{
    local cmd="" sock="" i
    local -a opts cmds names
    cmds=({" ".join(sorted(cmds))})
    for ((i = 2; i < CURRENT; i++)); do
        case "${{words[i]}}" in
            --socket) sock="${{words[i+1]}}"; ((i++)) ;;
            -*) ;;
            *) cmd="${{words[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        if [[ "${{words[CURRENT-1]}}" == --socket ]]; then _files; return; fi
        compadd -a cmds
        compadd -- --socket
        return
    fi
    case "$cmd" in
{cases}
    esac
    if [[ "${{words[CURRENT]}}" == -* ]]; then
        compadd -a opts
        return
    fi
    names=(${{(f)"$(_nsvisor_names)"}})
    case "$cmd" in
        {names}) compadd -a names ;;
        cp) compadd -S '' -- ${{^names}}: ; _files ;;
        completion) compadd bash zsh ;;
        *) _files ;;
    esac
}}
if (( $+functions[compdef] )); then
    compdef _nsvisor nsvisor
fi
"""


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    return {"bash": bash, "zsh": zsh}[shell](parser)
