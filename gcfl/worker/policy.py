"""The node's allow-list: which models, datasets and folders a fit request may name."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The run config's ``model`` for gcfl's own seed CNN: always allowed.
BUILTIN_MODEL = ""


class NotAllowed(PermissionError):
    """A fit request names a model or data that the node's :class:`WorkerPolicy` does not allow."""


def _not_listed(value: str, allowed: Sequence[str]) -> bool:
    """Whether absolute ``value`` is none of ``allowed``, compared as resolved real paths.

    Resolved, so that ``/allowed/../etc`` or a symlink inside an allowed
    folder that points out of it is what it leads to, not what it spells.
    """
    if not os.path.isabs(value):
        return True
    real = os.path.realpath(value)
    return real not in {os.path.realpath(path) for path in allowed}


def _resolved_note(value: str) -> str:
    real = os.path.realpath(value) if os.path.isabs(value) else value
    return "" if real == os.path.normpath(value) else f" (resolves to {real})"


@dataclass(frozen=True)
class WorkerPolicy:
    """What a fit request may name, set by the node: the worker's guard on its run config.

    gcfl's built-in CNN (``model`` empty) and built-in datasets (digits, and
    mnist/cifar10 from Keras' cache or download when ``data-dir`` is empty)
    are always allowed: they run only gcfl's own code on files the node's
    user put in its Keras cache. Beyond them a request may name only
    ``models`` (``package.module:function`` specs, compared as spelled: the
    spec is what gets imported), ``data_dirs`` (folders) and ``datasets``
    (``.npz`` files), the paths compared after resolving symlinks and ``..``.
    """

    models: tuple[str, ...] = ()
    data_dirs: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def check(self, run_config: Mapping[str, Any]) -> str | None:
        """Why this run config may not be trained here, or None if it may.

        Reads no file and imports nothing: only the paths are resolved.
        """
        from gcfl.config import BUILTIN_DATASETS

        model = run_config.get("model", BUILTIN_MODEL)
        if model != BUILTIN_MODEL and (not isinstance(model, str) or model not in self.models):
            return self._refusal("model", model, "--allow-model")
        data_dir = run_config.get("data-dir", "")
        if data_dir != "" and (
            not isinstance(data_dir, str) or _not_listed(data_dir, self.data_dirs)
        ):
            return self._refusal("data-dir", data_dir, "--data-dir")
        dataset = run_config.get("dataset", "digits")
        if dataset not in BUILTIN_DATASETS and (
            not isinstance(dataset, str)
            or not dataset.endswith(".npz")
            or _not_listed(dataset, self.datasets)
        ):
            return self._refusal("dataset", dataset, "--allow-dataset")
        return None

    @staticmethod
    def _refusal(key: str, value: object, flag: str) -> str:
        if not isinstance(value, str):
            return f"{key} {value!r} is not allowed on this node: it must be a string"
        if key != "model" and not os.path.isabs(value):
            return f"{key} {value!r} is not allowed on this node: it must be an absolute path"
        return (
            f"{key} {value!r}{'' if key == 'model' else _resolved_note(value)} is not allowed "
            f"on this node; start the worker with {flag} {shlex.quote(value)}"
        )

    @classmethod
    def for_run(cls, model: str, data_dir: str, dataset: str) -> WorkerPolicy:
        """What one run config names, for nodes whose operator also chose that run config."""
        return cls(
            models=(model,) if model else (),
            data_dirs=(data_dir,) if data_dir else (),
            datasets=(dataset,) if dataset.endswith(".npz") else (),
        )

    def to_args(self) -> list[str]:
        """The ``gcfl worker`` flags that give a worker this policy."""
        flags = [("--allow-model", self.models), ("--data-dir", self.data_dirs)]
        flags.append(("--allow-dataset", self.datasets))
        return [part for flag, values in flags for value in values for part in (flag, value)]


def _model_arg(value: str) -> str:
    if value != BUILTIN_MODEL and not (":" in value and all(value.split(":", 1))):
        raise argparse.ArgumentTypeError(f"{value!r} is not 'package.module:function'")
    return value


def _folder_arg(value: str) -> str:
    # Absolute now: the worker may run in another working directory than its flags were written in.
    return os.path.abspath(os.path.expanduser(value))


def _npz_arg(value: str) -> str:
    if not value.endswith(".npz"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a .npz file")
    return os.path.abspath(os.path.expanduser(value))


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The allow-list flags of ``gcfl worker`` and ``gcfl node`` (see :class:`WorkerPolicy`)."""
    parser.add_argument(
        "--allow-model",
        action="append",
        type=_model_arg,
        metavar="SPEC",
        help="a run config's 'model' (package.module:function) this worker may import and "
        "call; repeatable (default: only gcfl's built-in CNN)",
    )
    parser.add_argument(
        "--data-dir",
        action="append",
        type=_folder_arg,
        metavar="DIR",
        help="a folder a run config's 'data-dir' may name, for the worker to read mnist or "
        "CIFAR-10 from; repeatable (default: none, only Keras' cache or download)",
    )
    parser.add_argument(
        "--allow-dataset",
        action="append",
        type=_npz_arg,
        metavar="NPZ",
        help="a .npz file a run config's 'dataset' may name; repeatable (default: none, "
        "only the built-in datasets)",
    )


def policy_from_args(args: argparse.Namespace) -> WorkerPolicy:
    """The :class:`WorkerPolicy` that :func:`add_policy_arguments`' flags ask for."""
    return WorkerPolicy(
        models=tuple(args.allow_model or ()),
        data_dirs=tuple(args.data_dir or ()),
        datasets=tuple(args.allow_dataset or ()),
    )
