"""Run a command under the system-call filter a systemd unit asks for (its SystemCallFilter= lines and
SystemCallErrorNumber=), the way systemd applies it: the first allow-list line sets what is allowed, each
`~` line takes groups away, anything else fails with the error number. Groups are expanded by the host's own
`systemd-analyze syscall-filter`. Run with Debian's python3 (python3-seccomp): seccomp_exec.py UNIT CMD...
The filter is inherited across exec, so CMD runs entirely under it."""

import errno
import os
import subprocess
import sys

import seccomp


def expand(group: str, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    if not group.startswith("@"):
        return {group}
    if group in seen:
        return set()
    seen.add(group)
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True)
    names: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            names |= expand(word, seen)
    return names


def unit_filter(unit: str) -> tuple[set[str], int]:
    allowed: set[str] | None = None
    error = errno.EPERM
    for line in open(unit):
        key, _, value = line.strip().partition("=")
        if key == "SystemCallFilter":
            if value.startswith("~"):
                for group in value[1:].split():
                    allowed -= expand(group)
            else:
                allowed = set().union(*(expand(g) for g in value.split()))
        elif key == "SystemCallErrorNumber":
            error = getattr(errno, value)
    if allowed is None:
        raise SystemExit(f"{unit} asks for no allow-list filter")
    return allowed, error


def main():
    unit, command = sys.argv[1], sys.argv[2:]
    allowed, error = unit_filter(unit)
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(error))
    for name in sorted(allowed):
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):   # a name this architecture lacks
            pass
    f.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
