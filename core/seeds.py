"""Where the toolkit's random streams come from: every seed is a function of the run's seed, the round and
the site id, never of the clock or of process state, so a resumed run, a Flower node (which sees only its
own site) and the in-process engine draw the same numbers.

:func:`site_seed` is the ONE place a site id becomes a seed: a 64-bit BLAKE2b digest of the whole id (and
of any other parts), so ids sharing a prefix (``clinic-a``, ``clinic-b``) never share a stream. (The
first releases read the id's first 6 or 8 bytes, and ``clinic-a`` and ``clinic-b`` drew the same task.)
"""
from __future__ import annotations

import hashlib

import torch

_SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed and numpy take seeds below this


def site_seed(*parts: object) -> int:
    """A seed in ``[0, 2**63 - 1)`` from ``parts`` (a site id, usually with the run's seed, round or purpose).

    The parts are joined with ``/`` and hashed whole: ``site_seed(seed, site_id)`` is the seed of
    ``f"{seed}/{site_id}"``. Equal parts give equal seeds in every process and on every platform.

    Args:
        *parts: strings or numbers; at least one.

    Example:
        >>> site_seed("clinic-a") != site_seed("clinic-b")
        True
    """
    if not parts:
        raise ValueError("site_seed needs at least one part (the site id)")
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_MAX


def site_generator(seed: int, round_index: int, site_id: str) -> torch.Generator:
    """The generator of ONE site's episode in one round, a function of (seed, round, site id) only.

    Every site draws its episode from its own stream, so the in-process engine and a site's own
    Flower node (which sees no other site) draw the same episode.
    """
    return torch.Generator().manual_seed(site_seed(seed, round_index, site_id))


def round_generator(seed: int, round_index: int, salt: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, round, salt): resuming a run redraws the same episodes."""
    return torch.Generator().manual_seed((seed * 1_000_003 + round_index * 7919 + salt) % _SEED_MAX)
