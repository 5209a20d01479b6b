"""Count the primes below a million on a p2p cluster, and show who did what.

    python examples/primes.py [CLUSTER]     (default: P2P_CLUSTER, else personal)
"""

import collections
import os
import socket
import sys
import time

import p2p


def count_primes(low, high):
    """The number of primes in [low, high), and where it was counted."""
    count = 0
    for n in range(max(low, 2), high):
        if all(n % d for d in range(2, int(n ** 0.5) + 1)):
            count += 1
    return count, "%s pid %d" % (socket.gethostname(), os.getpid())


def main():
    cluster = sys.argv[1] if len(sys.argv) > 1 else None
    limit, step = 1000000, 50000
    started = time.monotonic()
    with p2p.Executor(cluster) as cluster_executor:
        lows = range(0, limit, step)
        results = list(cluster_executor.map(count_primes, lows,
                                            [low + step for low in lows]))
    total = sum(count for count, _ in results)
    print("%d primes below %d, in %.1f s, counted by:" % (
        total, limit, time.monotonic() - started))
    for worker, ranges in sorted(collections.Counter(w for _, w in results).items()):
        print("  %-30s %d ranges of %d" % (worker, ranges, step))


if __name__ == "__main__":
    main()
