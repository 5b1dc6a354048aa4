"""Deterministic bulk data for the transfer tests.

The stream is 1 MiB blocks of seeded pseudo-random bytes whose first 8 bytes are the block's
index, so it is cheap to make (one random block, then a copy per MiB), never compresses away,
and a lost, repeated or reordered segment changes the hash. The server streams it, the client
side regenerates it for uploads, and the test asks for its hash without any network at all.

    blob.py gen SIZE    write SIZE bytes of the stream to stdout
    blob.py sha SIZE    print the sha256 of the first SIZE bytes
"""

import hashlib
import random
import sys

BLOCK_SIZE = 1 << 20
_BLOCK = random.Random(0x6D6E6574).randbytes(BLOCK_SIZE)


def chunks(size):
    index = 0
    remaining = size
    while remaining > 0:
        chunk = index.to_bytes(8, "little") + _BLOCK[8:]
        if remaining < len(chunk):
            chunk = chunk[:remaining]
        yield chunk
        remaining -= len(chunk)
        index += 1


def sha256(size):
    digest = hashlib.sha256()
    for chunk in chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("gen", "sha"):
        sys.exit("usage: blob.py gen|sha SIZE")
    size = int(sys.argv[2])
    if sys.argv[1] == "sha":
        print(sha256(size))
        return
    out = sys.stdout.buffer
    try:
        for chunk in chunks(size):
            out.write(chunk)
        out.flush()
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
