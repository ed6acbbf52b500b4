"""The YAML configs shipped inside the package, and how ``--config NAME.yaml`` finds them.

A ``--config`` value that names an existing file is used as it is. Otherwise a bare shipped name
(``cnn.yaml``) or the repository's spelling of one (``configs/cnn.yaml``) means the file shipped
in ``damage_lightning/configs/``, so the README's commands work from any folder and from a wheel
install. Torch-free: the CLI resolves its arguments before it imports Lightning's parser.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from damage_lightning.errors import DataValidationError, Problem

SHIPPED_DIR = Path(__file__).resolve().parent / "configs"
# The folder the repository (and the README) call the shipped configs by.
REPO_FOLDER = "configs"
# Only values spelled as config files are resolved; anything else (jsonargparse also takes a
# config as inline YAML text) goes to the parser untouched.
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_CONFIG_FLAGS = ("--config", "-c")


def shipped_configs() -> list[str]:
    """Names of the shipped config files, sorted (``["cnn.yaml", ...]``)."""
    return sorted(p.name for p in SHIPPED_DIR.glob("*.yaml") if p.is_file())


def shipped_config(name: str) -> Path:
    """The shipped config file ``name`` (for example ``"cnn.yaml"``).

    Args:
        name: file name of a shipped config.

    Raises:
        DataValidationError: when the package ships no config of that name.
    """
    path = SHIPPED_DIR / name
    if Path(name).name != name or not path.is_file():
        raise DataValidationError(Problem(name, "", _unknown_reason()))
    return path


def _unknown_reason() -> str:
    return (
        "no such config file here, and the package ships none of that name; shipped configs: "
        + ", ".join(shipped_configs())
    )


def _shipped_name(path: Path) -> str | None:
    """The shipped config a missing relative path stands for, or ``None``."""
    if path.is_absolute() or path.parent not in (Path("."), Path(REPO_FOLDER)):
        return None
    return path.name if path.name in shipped_configs() else None


def resolve_config(name: str | os.PathLike) -> Path:
    """The config file meant by ``name``: the file itself when it exists, else the shipped one.

    Args:
        name: a path, a shipped name (``cnn.yaml``) or ``configs/<shipped name>``.

    Returns:
        The file to read.

    Raises:
        DataValidationError: when ``name`` is neither an existing file nor a shipped config
            (the message lists the shipped ones).
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = _shipped_name(path)
    if shipped is None:
        raise DataValidationError(Problem(str(name), "", _unknown_reason()))
    return SHIPPED_DIR / shipped


def _looks_like_file(value: str) -> bool:
    return "\n" not in value and value.lower().endswith(_CONFIG_SUFFIXES)


def resolve_config_args(argv: list[str], stream: TextIO | None = None) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` / ``-c X`` file resolved.

    Each substitution of a shipped file is announced as one line on ``stream`` (stderr by
    default), for example ``config: cnn.yaml -> /.../damage_lightning/configs/cnn.yaml
    (shipped)``. Values that exist as files and inline YAML pass unchanged.

    Args:
        argv: command-line arguments (without the program name).
        stream: where substitutions are announced.

    Raises:
        DataValidationError: a ``--config`` file that neither exists nor is shipped.
    """
    out = list(argv)
    i = 0
    while i < len(out):
        arg = out[i]
        flag, sep, value = arg.partition("=")
        if flag in _CONFIG_FLAGS and sep:
            out[i] = f"{flag}={_resolve_value(value, stream)}"
        elif arg in _CONFIG_FLAGS and i + 1 < len(out):
            i += 1
            out[i] = _resolve_value(out[i], stream)
        i += 1
    return out


def _resolve_value(value: str, stream: TextIO | None) -> str:
    if not _looks_like_file(value):
        return value
    path = resolve_config(value)
    if path == Path(value).expanduser():
        return value
    print(f"config: {value} -> {path} (shipped)", file=stream or sys.stderr)
    return str(path)
