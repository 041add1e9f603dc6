"""btrfs_tree: leaves packed full in order, nodes above them, and trees whose items are
sorted only after their places are known cut by count."""

from __future__ import annotations

from make_disk_image.filesystems import btrfs_tree as tree
from make_disk_image.filesystems.btrfs_format import ITEM, LEAF_SPACE, NODESIZE


def test_leaves_fill_in_order_and_an_empty_tree_is_one_leaf() -> None:
    per = LEAF_SPACE // (ITEM.size + 100)
    assert tree.leaf_splits([100] * (2 * per + 1)) == [per, per, 1]
    assert tree.leaf_splits([]) == [0]
    assert tree.shape([]).blocks == 1


def test_nodes_above_many_leaves() -> None:
    assert tree.node_counts(1) == []
    assert tree.node_counts(tree.NODE_PTRS) == [1]
    assert tree.node_counts(tree.NODE_PTRS + 1) == [2, 1]
    shape = tree.shape([4000] * 10)
    assert shape.levels == [0] * 3 + [1]  # four 4000-byte items fill no leaf


def test_uniform_shape_holds_any_order_of_its_items() -> None:
    shape = tree.uniform_shape(1000, 53)
    assert sum(shape.leaf_items) == 1000
    assert all(n * (ITEM.size + 53) <= LEAF_SPACE for n in shape.leaf_items)


def test_built_blocks_carry_their_address_level_and_checksum() -> None:
    ctx = tree.Context(bytes(16), bytes(16), 7, lambda data: len(data))
    items = [((n, 1, 0), bytes(3000)) for n in range(12)]
    shape = tree.shape([3000] * 12)
    addresses = [NODESIZE * (10 + n) for n in range(shape.blocks)]
    blocks: list[tuple[int, bytes]] = []
    root = tree.build(items, shape, addresses, 5, ctx,
                      lambda bytenr, block: blocks.append((bytenr, block)))
    assert [a for a, _ in blocks] == addresses
    assert root.bytenr == addresses[-1] and root.level == 1
    assert all(b[:4] == (NODESIZE - 32).to_bytes(4, "little") for _, b in blocks)
