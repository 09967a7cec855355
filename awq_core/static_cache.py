"""One position counter for all layers of a static KV cache, advanced once a forward.

transformers' `StaticLayer` keeps its own position counter (`cumulative_length`, a device tensor),
which each layer's `update` advances in place. Under torch.compile that in-place add of a one-element
tensor fuses with nothing, so every layer of a decode step launches a kernel of its own for it: 32
launches a step on a 7B model, about 1.2 us each on an H100 plus the gap before the next kernel.

Every layer of a forward writes the same positions, so the counters always hold the same value.
`share_position_counter` makes the layers read one tensor and lets only the last layer advance it,
after reading it like the others. A forward must then update every layer, in order, which is what
decoder stacks do (each layer once, in index order); a forward through some of the layers only would
leave the positions where they were. `Cache.reset()` zeroes the shared tensor (once per layer) and
`get_seq_length()` reads it, as before.

(Keeping a layer's keys and values as the two halves of one buffer, written by one `index_copy_`,
was measured too, to save the values' own copy kernel: Inductor then copied the whole buffer every
step, and the W4 step on the H100 took 2.78 ms instead of 2.52; see benchmarks/README.md.)
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, StaticLayer


class SharedCounterLayer(StaticLayer):
    """A `StaticLayer` whose `cumulative_length` is shared with the other layers of its cache; only the
    layer with `advances` set moves it forward."""

    advances: bool = False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new keys and values (batch, kv heads, new, head_dim) at the shared position."""
        assert self.is_initialized, "a layer shares its counter only after its cache was filled once"
        kv_length = key_states.shape[-2]
        cache_position = torch.arange(kv_length, device=self.device) + self.cumulative_length  # (new,)
        advance_position(self, kv_length)
        self.keys.index_copy_(2, cache_position, key_states)
        self.values.index_copy_(2, cache_position, value_states)
        return self.keys, self.values


def advance_position(layer: StaticLayer, tokens: int) -> None:
    """Move `layer`'s position counter on by `tokens`, as its `update` does: every plain StaticLayer
    moves its own; of the layers sharing one counter, only the one that `advances`."""
    if type(layer) is StaticLayer or layer.advances:
        layer.cumulative_length.add_(tokens)


def is_device_static(layer) -> bool:
    """An initialized plain or counter-sharing StaticLayer: its keys, values and position all live in
    device tensors at fixed addresses (sliding-window layers keep their position in Python)."""
    return type(layer) in (StaticLayer, SharedCounterLayer) and layer.is_initialized


def static_layer(cache: Cache | None, index: int) -> StaticLayer | None:
    """Layer `index` of `cache` if `is_device_static` (a caller may then write its keys and values at its
    position and `advance_position`), else None."""
    if not isinstance(cache, Cache) or index >= len(cache.layers):
        return None
    layer = cache.layers[index]
    return layer if is_device_static(layer) else None


def counter_shared(cache: Cache) -> bool:
    """Whether every layer of `cache` already reads one position counter."""
    layers = cache.layers
    return all(type(layer) is SharedCounterLayer for layer in layers) and all(
        layer.cumulative_length is layers[0].cumulative_length for layer in layers
    )


@torch.no_grad()
def share_position_counter(cache: Cache) -> bool:
    """Make the initialized plain `StaticLayer`s of `cache` share layer 0's position counter, advanced
    by the last layer only (in place; the keys and values stay where they are). Returns whether they
    share it: not where the layers hold different positions (a model that skips some layers' updates),
    which are left as they are."""
    layers = cache.layers
    if counter_shared(cache):
        return True
    assert layers and all(type(layer) is StaticLayer and layer.is_initialized for layer in layers), (
        "only an initialized static cache of plain StaticLayers can share its position counter"
    )
    shared = layers[0].cumulative_length
    lengths = torch.stack([layer.cumulative_length.to(shared.device) for layer in layers])  # (layers,)
    if not bool((lengths == shared).all()):  # one host sync, on the first decode step of a cache only
        return False
    for index, layer in enumerate(layers):
        layer.__class__ = SharedCounterLayer
        layer.cumulative_length = shared
        layer.advances = index == len(layers) - 1
    return True
