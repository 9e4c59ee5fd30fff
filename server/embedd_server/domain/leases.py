"""Leases: who may write on behalf of a task or a sync cycle (pure: no I/O).

A lease is held by an `owner` (a process) under an `epoch`, the fencing token: every claim of
the row increments it, so a holder whose lease lapsed and was claimed again - by another
process, or by a new claim under the same owner string - is told apart from the new holder.
Every write made under a lease checks both, in the transaction it fences, and raises
`LeaseLost` (writing nothing) when the row is no longer the holder's.
"""

from __future__ import annotations

from dataclasses import dataclass


class LeaseLost(Exception):
    """The row is no longer ours (taken over, finished elsewhere, or deleted): stop at once,
    without writing anything more."""


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    epoch: int
