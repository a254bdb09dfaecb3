"""Which training frames an epoch draws when the drives are balanced (`train --drive-balance POWER`).

A street seen in 62 frames is worth more to a new street than the 62 next frames of one seen in 305
(models/experiments/frames_per_drive.md), yet a uniform draw shows each drive in proportion to its frames.
POWER moves the drives' shares from that (0) to equal ones (1): drive d gets a share in proportion to
n_d ** (1 - POWER) of an epoch's draws, which stay as many as there are frames.
"""
import numpy as np


def drive_shares(frame_counts: dict, power: float) -> dict:
    """Each drive's share of an epoch's draws, summing to 1."""
    weights = {drive: n ** (1.0 - power) for drive, n in frame_counts.items()}
    total = sum(weights.values())
    return {drive: w / total for drive, w in weights.items()}


def draws_per_drive(frame_counts: dict, power: float) -> dict:
    """How many of an epoch's sum(frame_counts) draws each drive gets: the shares, rounded by largest remainder
    so the counts add up exactly."""
    n = sum(frame_counts.values())
    exact = {drive: share * n for drive, share in drive_shares(frame_counts, power).items()}
    counts = {drive: int(np.floor(x)) for drive, x in exact.items()}
    by_remainder = sorted(exact, key=lambda d: (-(exact[d] - counts[d]), d))
    for drive in by_remainder[:n - sum(counts.values())]:
        counts[drive] += 1
    return counts


def balanced_order(drives: list, power: float, rng: np.random.Generator) -> np.ndarray:
    """An epoch's order of frame indices (drives[i] is frame i's drive). POWER 0 is the uniform draw, the plain
    permutation the recipe has always used (same random numbers, same order). Otherwise each drive's draws take
    every one of its frames once per whole pass they allow, then a random subset of them for the rest, so no
    frame of a drive is drawn twice before all of that drive's were drawn once; the draws are then shuffled."""
    if power == 0:
        return rng.permutation(len(drives))
    by_drive = {}
    for i, drive in enumerate(drives):
        by_drive.setdefault(drive, []).append(i)
    counts = draws_per_drive({d: len(ix) for d, ix in by_drive.items()}, power)
    order = []
    for drive in sorted(by_drive):
        frames = np.asarray(by_drive[drive])
        passes, rest = divmod(counts[drive], len(frames))
        order += [frames] * passes + [rng.choice(frames, size=rest, replace=False)]
    return rng.permutation(np.concatenate(order))
