"""Render the Mandelbrot set in tiles across a p2p cluster, and save it as a PNG.

    python -m p2p worker --workers 2 &      # workers on your personal cluster
    python examples/mandelbrot.py           # writes mandelbrot.png

    python examples/mandelbrot.py --cluster alice/p2p --width 1920 --height 1080 \\
        --center=-0.7436,0.1318 --span 0.004 --depth 1500

Each tile is a band of rows, computed by a worker in plain Python and sent
back as PNG scanlines; the PNG is written with zlib and struct alone.
"""

import argparse
import struct
import time
import zlib

import p2p


def tile(top, rows, width, height, center, span, depth):
    """Rows top..top+rows of the image as PNG scanlines (a filter byte, then RGB)."""
    import math

    cx, cy = center
    scale = span / width
    lines = bytearray()
    for y in range(top, min(top + rows, height)):
        lines.append(0)  # PNG filter: none
        im = cy + (height / 2 - y) * scale
        for x in range(width):
            re = cx + (x - width / 2) * scale
            zr = zi = 0.0
            n = 0
            while n < depth and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + re, 2 * zr * zi + im
                n += 1
            if n == depth:
                lines += b"\x00\x00\x00"  # inside the set
                continue
            # A smooth colour from the escape speed: blue to gold to white.
            t = (n + 1 - math.log2(max(math.log2(zr * zr + zi * zi) / 2, 1e-9))) / 64
            lines += bytes(int(255 * (0.5 + 0.5 * math.cos(math.tau * (t + shift))))
                           for shift in (0.55, 0.45, 0.3))
    return bytes(lines)


def png(width, height, scanlines):
    """A truecolour PNG file of the given scanlines."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(scanlines, 9)) + chunk(b"IEND", b""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", help="owner/name (default P2P_CLUSTER, else your "
                        "personal cluster)")
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--center", default="-0.75,0", help="re,im (default -0.75,0)")
    parser.add_argument("--span", type=float, default=3.0, help="width in the plane")
    parser.add_argument("--depth", type=int, default=256, help="iterations per pixel")
    parser.add_argument("--rows", type=int, default=25, help="rows per tile")
    parser.add_argument("--out", default="mandelbrot.png")
    args = parser.parse_args()
    center = tuple(float(part) for part in args.center.split(","))

    started = time.monotonic()
    tops = range(0, args.height, args.rows)
    with p2p.Executor(args.cluster) as executor:
        tiles = executor.map(tile, tops, *[[value] * len(tops) for value in (
            args.rows, args.width, args.height, center, args.span, args.depth)],
            chunksize=1, progress=True)
        image = png(args.width, args.height, b"".join(tiles))
    with open(args.out, "wb") as f:
        f.write(image)
    print("wrote %s: %dx%d pixels in %d tiles on %s, %.1fs" % (
        args.out, args.width, args.height, len(tops), executor.cluster,
        time.monotonic() - started))


if __name__ == "__main__":
    main()
