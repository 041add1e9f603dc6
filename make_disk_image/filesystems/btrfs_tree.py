"""btrfs B-trees built bottom up from sorted items: leaves packed full, then nodes.

The shape (how many blocks at each level) depends only on the items' sizes, so a
caller learns it first, places the blocks (the extent tree lists every block, its own
too), and builds the blocks at those addresses afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from make_disk_image.filesystems.btrfs_format import (
    HEADER,
    HEADER_FLAGS,
    ITEM,
    KEY_PTR,
    LEAF_SPACE,
    NODESIZE,
    Key,
    RootRef,
)

NODE_PTRS = LEAF_SPACE // KEY_PTR.size
Item = tuple[Key, bytes]


def leaf_splits(sizes: Sequence[int]) -> list[int]:
    """How many items each leaf holds, filling leaves in order (at least one leaf)."""
    counts: list[int] = []
    count = free = 0
    for size in sizes:
        need = ITEM.size + size
        if need > LEAF_SPACE:
            raise ValueError(f"an item of {size} bytes is larger than a leaf")
        if need > free and count:
            counts.append(count)
            count = 0
        if not count:
            free = LEAF_SPACE
        count += 1
        free -= need
    counts.append(count)
    return counts


def node_counts(leaves: int) -> list[int]:
    """Blocks at each level above the leaves, up to the root."""
    counts = []
    below = leaves
    while below > 1:
        below = -(-below // NODE_PTRS)
        counts.append(below)
    return counts


@dataclass(frozen=True)
class Shape:
    leaf_items: list[int]
    nodes: list[int]  # per level, from 1

    @property
    def levels(self) -> list[int]:
        """The level of each block, in the order the blocks are placed."""
        out = [0] * len(self.leaf_items)
        for level, count in enumerate(self.nodes, 1):
            out += [level] * count
        return out

    @property
    def blocks(self) -> int:
        return len(self.leaf_items) + sum(self.nodes)


def shape(sizes: Sequence[int]) -> Shape:
    """The shape of a tree of items of these sizes, in this order."""
    leaves = leaf_splits(sizes)
    return Shape(leaves, node_counts(len(leaves)))


def uniform_shape(count: int, largest: int) -> Shape:
    """The shape of a tree of `count` items of at most `largest` bytes, in any order:
    every leaf holds as many as fit were all of them the largest."""
    per = LEAF_SPACE // (ITEM.size + largest)
    leaves = [per] * (count // per) + ([count % per] if count % per or not count else [])
    return Shape(leaves, node_counts(len(leaves)))


@dataclass(frozen=True)
class Context:
    """What every block of one filesystem carries, and its checksum."""

    fsid: bytes
    chunk_uuid: bytes
    generation: int
    checksum: Callable[[bytes], int]

    def seal(self, body: bytearray, bytenr: int, owner: int, count: int, level: int) -> bytes:
        HEADER.pack_into(body, 0, bytes(32), self.fsid, bytenr, HEADER_FLAGS,
                         self.chunk_uuid, self.generation, owner, count, level)
        body[0:4] = self.checksum(bytes(body[32:])).to_bytes(4, "little")
        return bytes(body)


def _leaf(items: Sequence[Item]) -> bytearray:
    heads = []
    datas = []
    end = LEAF_SPACE
    for (objectid, kind, offset), data in items:
        end -= len(data)
        heads.append(ITEM.pack(objectid, kind, offset, end, len(data)))
        datas.append(data)
    head = b"".join(heads)
    datas.reverse()
    tail = b"".join(datas)
    body = bytearray(NODESIZE)
    body[HEADER.size : HEADER.size + len(head)] = head
    body[NODESIZE - len(tail) :] = tail
    return body


def build(items: Sequence[Item], tree_shape: Shape, addresses: Sequence[int], owner: int,
          ctx: Context, emit: Callable[[int, bytes], None]) -> RootRef:
    """The tree's blocks, each given to `emit` as (bytenr, bytes) as soon as it is made
    (a tree's blocks are never all in memory: the fs tree's are tens of MiB), at
    `addresses` (one per block of `tree_shape`, leaves first); where its root is."""
    assert len(addresses) == tree_shape.blocks
    # (first key, bytenr) of each block of the level below.
    below: list[tuple[Key, int]] = []
    at = 0
    for index, count in enumerate(tree_shape.leaf_items):
        chunk = items[at : at + count]
        bytenr = addresses[index]
        body = _leaf(chunk)
        emit(bytenr, ctx.seal(body, bytenr, owner, len(chunk), 0))
        below.append((chunk[0][0] if chunk else (0, 0, 0), bytenr))
        at += count
    assert at == len(items)
    next_address = len(tree_shape.leaf_items)
    for level, count in enumerate(tree_shape.nodes, 1):
        above = []
        for n in range(count):
            # Spread evenly: no node is left with too few children.
            children = below[n * len(below) // count : (n + 1) * len(below) // count]
            bytenr = addresses[next_address]
            next_address += 1
            ptrs = b"".join(KEY_PTR.pack(*key, child, ctx.generation)
                            for key, child in children)
            body = bytearray(NODESIZE)
            body[HEADER.size : HEADER.size + len(ptrs)] = ptrs
            emit(bytenr, ctx.seal(body, bytenr, owner, len(children), level))
            above.append((children[0][0], bytenr))
        below = above
    return RootRef(below[0][1], len(tree_shape.nodes))
