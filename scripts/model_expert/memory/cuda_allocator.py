"""PyTorch's CUDA caching allocator, simulated: what it reserves from the driver for a sequence of
allocations and frees (the tracker's, in the order the step made them).

The rules are c10/cuda/CUDACachingAllocator.cpp's, with its default settings (no max_split_size, no
expandable segments, no garbage-collection threshold, one stream):
- round_size: every request rounded up to a multiple of kMinBlockSize = 512 B;
- two pools: requests <= kSmallSize (1 MiB) use the small pool, larger ones the large pool;
- get_free_block: the best fit, the smallest cached free block of the pool that is large enough (ties: the
  lowest address);
- get_allocation_size, when no cached block fits, a new segment (cudaMalloc) of kSmallBuffer = 2 MiB for
  small requests, kLargeBuffer = 20 MiB for requests under kMinLargeAlloc = 10 MiB, else the request rounded
  up to kRoundLarge = 2 MiB;
- should_split: the rest of the chosen block becomes a free block when it is >= 512 B (small pool) or
  > 1 MiB (large pool); otherwise the whole block is handed out (and counted as allocated);
- free: a block merges with free neighbours of its segment; segments stay reserved (cached);
- when cudaMalloc fails (the capacity would be exceeded), release_cached_blocks frees every segment with
  no allocated block and the allocation is tried once more; failing that, out of memory.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

MiB = 2**20
MIN_BLOCK_BYTES = 512  # kMinBlockSize
SMALL_REQUEST_BYTES = 1 * MiB  # kSmallSize
SMALL_SEGMENT_BYTES = 2 * MiB  # kSmallBuffer
LARGE_SEGMENT_BYTES = 20 * MiB  # kLargeBuffer
MIN_LARGE_ALLOC_BYTES = 10 * MiB  # kMinLargeAlloc
ROUND_LARGE_BYTES = 2 * MiB  # kRoundLarge


def round_size(request_bytes: int) -> int:
    """round_size(): a multiple of 512 B, at least 512 B."""
    return max(MIN_BLOCK_BYTES, -(-request_bytes // MIN_BLOCK_BYTES) * MIN_BLOCK_BYTES)


def allocation_size(size: int) -> int:
    """get_allocation_size(): the segment cudaMalloc'd for a rounded request SIZE that no cached block fits."""
    if size <= SMALL_REQUEST_BYTES:
        return SMALL_SEGMENT_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_SEGMENT_BYTES
    return -(-size // ROUND_LARGE_BYTES) * ROUND_LARGE_BYTES


class OutOfMemory(Exception):
    pass


@dataclass(eq=False)
class Block:
    address: int
    size: int
    small: bool
    segment: int
    allocated: bool = False
    prev: "Block | None" = None
    next: "Block | None" = None


@dataclass
class CachingAllocator:
    """The allocator's state; CAPACITY_BYTES (None: unlimited) is what cudaMalloc may hand out in all."""

    capacity_bytes: int | None = None
    reserved_bytes: int = 0
    allocated_bytes: int = 0
    peak_reserved_bytes: int = 0
    peak_allocated_bytes: int = 0
    releases: int = 0  # times release_cached_blocks ran to make room
    _pools: dict[bool, list] = field(default_factory=lambda: {True: [], False: []})
    _segments: dict[int, int] = field(default_factory=dict)  # segment id -> bytes
    _next_address: int = 0
    _ids: itertools.count = field(default_factory=itertools.count)

    def malloc(self, request_bytes: int) -> Block | None:
        if request_bytes <= 0:
            return None
        size = round_size(request_bytes)
        small = size <= SMALL_REQUEST_BYTES
        block = self._take_free(small, size)
        if block is None:
            block = self._new_segment(small, allocation_size(size))
        if self._should_split(block, size):
            rest = Block(block.address + size, block.size - size, small, block.segment, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            self._insert_free(rest)
        block.allocated = True
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return block

    def free(self, block: Block | None) -> None:
        if block is None:
            return
        block.allocated = False
        self.allocated_bytes -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove_free(neighbour)
                if neighbour is block.prev:
                    block.address, block.prev = neighbour.address, neighbour.prev
                    if neighbour.prev is not None:
                        neighbour.prev.next = block
                else:
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
                block.size += neighbour.size
        self._insert_free(block)

    # --- internals ---------------------------------------------------------------------------------
    @staticmethod
    def _should_split(block: Block, size: int) -> bool:
        remaining = block.size - size
        return remaining >= MIN_BLOCK_BYTES if block.small else remaining > SMALL_REQUEST_BYTES

    def _insert_free(self, block: Block) -> None:
        bisect.insort(self._pools[block.small], (block.size, block.address, id(block), block))

    def _remove_free(self, block: Block) -> None:
        pool = self._pools[block.small]
        index = bisect.bisect_left(pool, (block.size, block.address, id(block)))
        del pool[index]

    def _take_free(self, small: bool, size: int) -> Block | None:
        pool = self._pools[small]
        index = bisect.bisect_left(pool, (size,))
        if index == len(pool):
            return None
        return pool.pop(index)[3]

    def _new_segment(self, small: bool, segment_bytes: int) -> Block:
        if self.capacity_bytes is not None and self.reserved_bytes + segment_bytes > self.capacity_bytes:
            self._release_cached_segments()
            if self.reserved_bytes + segment_bytes > self.capacity_bytes:
                raise OutOfMemory(f"{segment_bytes:,} B segment with {self.reserved_bytes:,} B reserved")
        segment = next(self._ids)
        self._segments[segment] = segment_bytes
        block = Block(self._next_address, segment_bytes, small, segment)
        self._next_address += segment_bytes
        self.reserved_bytes += segment_bytes
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        return block

    def _release_cached_segments(self) -> None:
        """release_cached_blocks(): every free block that is a whole segment goes back to the driver."""
        self.releases += 1
        for small, pool in self._pools.items():
            keep = []
            for entry in pool:
                block = entry[3]
                if block.prev is None and block.next is None:
                    self.reserved_bytes -= self._segments.pop(block.segment)
                else:
                    keep.append(entry)
            self._pools[small] = keep


@dataclass(frozen=True)
class Replay:
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    out_of_memory: bool
    releases: int


def replay(events: list[tuple[int, int | None]], capacity_bytes: int | None = None) -> Replay:
    """Run EVENTS ((key, request bytes) = allocation, (key, None) = free of that key's block) through the allocator."""
    allocator = CachingAllocator(capacity_bytes)
    blocks: dict[int, Block | None] = {}
    try:
        for key, request in events:
            if request is None:
                allocator.free(blocks.pop(key, None))
            else:
                blocks[key] = allocator.malloc(request)
    except OutOfMemory:
        return Replay(allocator.peak_allocated_bytes, allocator.peak_reserved_bytes, True, allocator.releases)
    return Replay(allocator.peak_allocated_bytes, allocator.peak_reserved_bytes, False, allocator.releases)
