"""Teacher registry: teacher names -> builder functions, and the public front door to build a teacher by name.

A builder is a function ``builder(teachers_folder) -> nn.Module`` receiving the validated ``teachers_dir`` as a
:class:`~pathlib.Path` (or None: resolve through ``$LIPSIM_TEACHERS_DIR`` and the online/installed sources). The
built-in teachers are registered here; users add their own with :func:`register_teacher` instead of editing a
private dict.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class L1(nn.Module):
    ...     def forward(self, x0, x1):
    ...         return (x0 - x1).abs().mean(dim=(1, 2, 3))
    >>> register_teacher("l1-demo", "distance", lambda folder: L1())
    >>> "l1-demo" in list_teachers("distance")
    True
    >>> build_distance_teacher("l1-demo")(torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32))
    tensor([1., 1.])
    >>> unregister_teacher("l1-demo")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from torch import nn

from .dists import DISTS
from .dreamsim_adapter import DreamSimTeacher
from .lpips import LPIPS
from .stats import AlexNetStats, VGGStats
from .weights import TEACHERS_DIR_ENV, WEIGHT_FILES, PathLike

__all__ = ["TeacherBuilder", "register_teacher", "unregister_teacher", "list_teachers",
           "build_distance_teacher", "build_embedding_teacher"]

TeacherBuilder: TypeAlias = Callable[[Path | None], nn.Module]
"""A teacher constructor: ``builder(teachers_folder_or_None) -> frozen nn.Module``."""



def _teachers_folder(teachers_dir: PathLike | None) -> Path | None:
    if teachers_dir is None:
        return None
    if not isinstance(teachers_dir, (str, os.PathLike)):
        raise TypeError(f"teachers_dir must be a str or os.PathLike, got {type(teachers_dir).__name__}.")
    folder = Path(teachers_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"teachers_dir '{folder}' is not a directory. Pass a folder holding {sorted(WEIGHT_FILES.values())}, "
            f"or None to use ${TEACHERS_DIR_ENV} / the online sources."
        )
    return folder


def _file_in(folder: Path | None, key: str) -> Path | None:
    return None if folder is None else folder / WEIGHT_FILES[key]


def _lpips_vgg(folder: Path | None) -> nn.Module:
    return LPIPS("vgg", _file_in(folder, "vgg16"), _file_in(folder, "lpips-vgg-heads"))


def _lpips_alex(folder: Path | None) -> nn.Module:
    return LPIPS("alex", _file_in(folder, "alexnet"), _file_in(folder, "lpips-alex-heads"))


def _dists(folder: Path | None) -> nn.Module:
    return DISTS(_file_in(folder, "vgg16"), _file_in(folder, "dists-alpha-beta"))


def _alex_stats(folder: Path | None) -> nn.Module:
    return AlexNetStats(_file_in(folder, "alexnet"))


def _vgg_stats(folder: Path | None) -> nn.Module:
    return VGGStats(_file_in(folder, "vgg16"))


def _dreamsim(folder: Path | None) -> nn.Module:
    return DreamSimTeacher(cache_dir=folder)  # DreamSim keeps its checkpoints in the teachers folder if given


_DISTANCE_TEACHERS: dict[str, TeacherBuilder] = {
    "lpips-vgg": _lpips_vgg,
    "lpips-alex": _lpips_alex,
    "dists": _dists,
}
_EMBEDDING_TEACHERS: dict[str, TeacherBuilder] = {
    "alex-stats": _alex_stats,
    "vgg-stats": _vgg_stats,
    "dreamsim": _dreamsim,
}
_KINDS = {"distance": _DISTANCE_TEACHERS, "embedding": _EMBEDDING_TEACHERS}
_BUILTIN = frozenset([*_DISTANCE_TEACHERS, *_EMBEDDING_TEACHERS])


def register_teacher(name: str, kind: str, builder: TeacherBuilder, *, overwrite: bool = False) -> None:
    """Make a teacher buildable by name (:func:`build_distance_teacher` / :func:`build_embedding_teacher`).

    Args:
        name: the teacher's name, a non-empty str (e.g. ``"my-lpips"``); names are unique across both kinds.
        kind: ``"distance"`` (``teacher(x0, x1) -> (N,)``) or ``"embedding"`` (``teacher(x) -> (N, D)``, with an
            ``embed_dim`` attribute), for images ``(N, 3, H, W)`` in [0, 1].
        builder: ``builder(teachers_folder) -> nn.Module``; ``teachers_folder`` is the caller's ``teachers_dir`` as
            a :class:`~pathlib.Path`, or None. It should return a frozen module (no parameter requiring grad).
        overwrite: replace an existing user-registered teacher of the same kind instead of raising.

    Raises:
        TypeError: if ``name`` is not a str or ``builder`` is not callable.
        ValueError: for an unknown ``kind``, an empty name, a name already registered (pass ``overwrite=True`` to
            replace a user teacher of the same kind), or a built-in name.

    Example:
        >>> register_teacher("mine", "embedding", lambda folder: MyEmbedder(folder))  # doctest: +SKIP
    """
    if not isinstance(name, str):
        raise TypeError(f"teacher name must be a str, got {type(name).__name__}.")
    if not name:
        raise ValueError("teacher name must be a non-empty str, e.g. 'my-lpips'.")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}.")
    if not callable(builder):
        raise TypeError(f"builder must be callable as builder(teachers_folder) -> nn.Module, got "
                        f"{type(builder).__name__}.")
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in teacher and cannot be replaced; register under another name.")
    for other_kind, registry in _KINDS.items():
        if name in registry and (other_kind != kind or not overwrite):
            raise ValueError(
                f"teacher {name!r} is already registered as a {other_kind} teacher; choose another name"
                + (" or pass overwrite=True." if other_kind == kind else " (names are unique across kinds).")
            )
    _KINDS[kind][name] = builder


def unregister_teacher(name: str) -> None:
    """Remove a teacher added with :func:`register_teacher`.

    Args:
        name: its registered name.

    Raises:
        ValueError: for a built-in teacher or a name that is not registered.
    """
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in teacher and cannot be unregistered.")
    for registry in _KINDS.values():
        if name in registry:
            del registry[name]
            return
    raise ValueError(f"No user-registered teacher {name!r}; registered: {list_teachers()}.")


def list_teachers(kind: str | None = None) -> list[str]:
    """Names accepted by :func:`build_distance_teacher` / :func:`build_embedding_teacher`.

    Args:
        kind: ``"distance"``, ``"embedding"``, or None for both.

    Returns:
        Sorted teacher names.

    Raises:
        ValueError: for an unknown ``kind``.

    Example:
        >>> list_teachers("distance")
        ['dists', 'lpips-alex', 'lpips-vgg']
    """
    if kind is None:
        return sorted([*_DISTANCE_TEACHERS, *_EMBEDDING_TEACHERS])
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)} or None, got {kind!r}.")
    return sorted(_KINDS[kind])


def _build(kind: str, name: str, teachers_dir: PathLike | None) -> nn.Module:
    registry = _KINDS[kind]
    if not isinstance(name, str):
        raise TypeError(f"{kind} teacher name must be a str, got {type(name).__name__}.")
    if name not in registry:
        raise ValueError(f"Unknown {kind} teacher {name!r}; valid names: {sorted(registry)}.")
    return registry[name](_teachers_folder(teachers_dir))


def build_distance_teacher(name: str, teachers_dir: PathLike | None = None) -> nn.Module:
    """Build a frozen distance teacher: ``teacher(x0, x1) -> (N,)`` for images in [0, 1].

    Args:
        name: ``"lpips-vgg"``, ``"lpips-alex"`` or ``"dists"`` (see :func:`list_teachers`).
        teachers_dir: folder holding the files of :data:`WEIGHT_FILES`; every weight path is taken from it. None
            resolves each file through ``$LIPSIM_TEACHERS_DIR`` and then the online/installed sources.

    Returns:
        The teacher module (:class:`LPIPS` or :class:`DISTS`), on the CPU, frozen.

    Raises:
        ValueError: for an unknown name (lists the valid ones) or a mismatched weight file.
        TypeError: if ``name`` is not a str.
        FileNotFoundError: if ``teachers_dir`` or a weight file is missing.

    Example:
        >>> lpips = build_distance_teacher("lpips-vgg", teachers_dir="../shared/teachers")  # doctest: +SKIP
    """
    return _build("distance", name, teachers_dir)


def build_embedding_teacher(name: str, teachers_dir: PathLike | None = None) -> nn.Module:
    """Build a frozen embedding teacher: ``teacher(x) -> (N, teacher.embed_dim)`` for images in [0, 1].

    Args:
        name: ``"alex-stats"``, ``"vgg-stats"`` or ``"dreamsim"`` (see :func:`list_teachers`).
        teachers_dir: folder holding the files of :data:`WEIGHT_FILES` (for ``"dreamsim"``: its checkpoint
            cache). None resolves through ``$LIPSIM_TEACHERS_DIR`` and then the online sources.

    Returns:
        The teacher module (:class:`AlexNetStats`, :class:`VGGStats` or :class:`DreamSimTeacher`), frozen.

    Raises:
        ValueError: for an unknown name (lists the valid ones) or a mismatched weight file.
        TypeError: if ``name`` is not a str.
        FileNotFoundError: if ``teachers_dir`` or a weight file is missing.
        ImportError: for ``"dreamsim"`` without the ``dreamsim`` package.

    Example:
        >>> teacher = build_embedding_teacher("alex-stats", teachers_dir="../shared/teachers")  # doctest: +SKIP
        >>> teacher.embed_dim                                                                   # doctest: +SKIP
        2304
    """
    return _build("embedding", name, teachers_dir)
