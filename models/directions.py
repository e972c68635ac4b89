"""The two translation directions, described once for every tool.

G translates T1 -> T2 (domain A -> B) and F translates T2 -> T1; test data comes as
(T1, T2) pairs, so a direction's source sits at `source_index` of a pair.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Direction:
    name: str
    source: str  # BIDS suffix of the source contrast
    result: str  # BIDS suffix of the translated contrast
    generator: str  # the network that translates it, as named in checkpoints
    source_index: int  # position of the source contrast in a (T1, T2) pair
    reverse: str  # the direction that translates back

    @property
    def target_index(self) -> int:
        return 1 - self.source_index


DIRECTIONS = {
    "t1_to_t2": Direction("t1_to_t2", "T1w", "T2w", "generator_g", 0, "t2_to_t1"),
    "t2_to_t1": Direction("t2_to_t1", "T2w", "T1w", "generator_f", 1, "t1_to_t2"),
}
GENERATORS = tuple(direction.generator for direction in DIRECTIONS.values())
