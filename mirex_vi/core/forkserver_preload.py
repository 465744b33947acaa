"""Imported by the worker pool's forkserver, and only there: it dies with the main process
(see :mod:`mirex_vi.core.lifeline`)."""

from __future__ import annotations

from .lifeline import die_with_parent


die_with_parent()
