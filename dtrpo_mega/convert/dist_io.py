"""Streaming reads and writes of megatron-core dist checkpoints (torch_dist), without a model.

megatron-core's torch_dist format is a torch.distributed.checkpoint (DCP) folder (`.metadata`
plus `*.distcp` files) with megatron's `metadata.json` and `common.pt` beside it. Both
directions go through DCP itself, in one process and without collectives (`no_dist=True`):

- `write_checkpoint` plans every chunk from shapes alone and makes each chunk's data only when
  DCP's writer asks for it (`SavePlanner.resolve_data`); with one file per chunk, the writer
  holds one chunk at a time, and the producer caches one layer tensor for its TP chunks.
- `read_tensors` loads chosen layers of chosen tensors (DCP reshards whatever chunking a layout
  saved into the requested region), so an export holds one layer at a time.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import (
    LoadPlan, LoadPlanner, ReadItem, SavePlan, SavePlanner, TensorWriteData, WriteItem, WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME

from dtrpo_mega.convert.megatron_layout import Chunk, Item
from dtrpo_mega.checkpoint.safe_pickle import install as restrict_metadata_unpickling

restrict_metadata_unpickling()

Producer = Callable[[Item], Tensor]  # an item's full tensor


@contextlib.contextmanager
def _single_process():
    """DCP warns that it assumes a single process even when asked for one (`no_dist=True`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class _LazySavePlanner(SavePlanner):
    def __init__(self, chunks: list[Chunk], num_layers: int, dtype: torch.dtype, produce: Producer):
        self.chunks = {(c.item.key, c.offsets): c for c in chunks}
        self.items = [
            WriteItem(
                index=MetadataIndex(c.item.key, torch.Size(c.offsets)),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)),
                    properties=TensorProperties(dtype=dtype),
                    size=torch.Size(c.tensor.global_shape(num_layers)),
                ),
            )
            for c in chunks
        ]
        self.dtype = dtype
        self.produce = produce
        self._cached: tuple[Item, Tensor] | None = None

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False) -> None:
        pass

    def create_local_plan(self) -> SavePlan:
        return SavePlan(self.items)

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        return create_default_global_save_plan(all_plans)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return new_plan

    def resolve_data(self, write_item: WriteItem) -> Tensor:
        chunk = self.chunks[(write_item.index.fqn, tuple(write_item.index.offset))]
        if self._cached is None or self._cached[0] != chunk.item:
            self._cached = None  # free the previous item's tensor before making the next
            self._cached = (chunk.item, self.produce(chunk.item).to(self.dtype))
        data = self._cached[1]
        if (local := chunk.local()) is not None:
            data = data.narrow(*local)
        data = data.reshape((1,) * len(chunk.item.lead) + tuple(data.shape))
        if tuple(data.shape) != chunk.sizes:
            raise ValueError(f"{chunk.tensor.name} layer {chunk.layer} expert {chunk.item.expert}: produced "
                             f"{tuple(data.shape)}, the chunk is {chunk.sizes}")
        return data.contiguous()


def write_checkpoint(ckpt_dir: str | Path, chunks: list[Chunk], num_layers: int, dtype: torch.dtype,
                     produce: Producer) -> None:
    """Write a torch_dist checkpoint of `chunks`, making each chunk's data on demand."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    writer = dcp.FileSystemWriter(ckpt_dir, single_file_per_rank=False, thread_count=1)
    with _single_process():
        dcp.save({}, storage_writer=writer, planner=_LazySavePlanner(chunks, num_layers, dtype, produce), no_dist=True)
    torch.save({}, ckpt_dir / COMMON_STATE_FNAME)
    save_config(CheckpointingConfig(sharded_backend="torch_dist"), str(ckpt_dir))


def stored_tensors(ckpt_dir: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (global shape, dtype) of every tensor in a torch_dist checkpoint."""
    metadata = dcp.FileSystemReader(str(ckpt_dir)).read_metadata()
    return {
        key: (tuple(md.size), md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if hasattr(md, "chunks")
    }


class _RegionLoadPlanner(LoadPlanner):
    """Loads one region (a layer of a stacked tensor, an expert, or a whole tensor) per requested key."""

    def __init__(self, regions: dict[str, tuple[ChunkStorageMetadata, Tensor]]):
        self.regions = regions

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        self.metadata = metadata

    def create_local_plan(self) -> LoadPlan:
        items: list[ReadItem] = []
        for key, (region, _) in self.regions.items():
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [region])
        return LoadPlan(items)

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item: ReadItem, value) -> None:
        raise ValueError(f"unexpected non-tensor item {read_item.dest_index.fqn}")

    def resolve_tensor(self, read_item: ReadItem) -> Tensor:
        target = self.regions[read_item.dest_index.fqn][1]
        for dim, (offset, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            target = target.narrow(dim, offset, length)
        return target

    def commit_tensor(self, read_item: ReadItem, tensor: Tensor) -> None:
        pass


def read_tensors(ckpt_dir: str | Path, requests: list[Item],
                 stored: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[Item, Tensor]:
    """Each item's tensor (one layer's, one expert's, or the whole), in the stored dtype."""
    regions, out = {}, {}
    for item in requests:
        shape, dtype = stored[item.key]
        lead = item.lead
        buffer = torch.empty((*(1,) * len(lead), *shape[len(lead):]), dtype=dtype)
        region = ChunkStorageMetadata(torch.Size((*lead, *(0,) * (len(shape) - len(lead)))), torch.Size(buffer.shape))
        out[item] = buffer.reshape(shape[len(lead):])
        if item.key in regions:
            raise ValueError(f"one read per key: {item.key} is requested twice")
        regions[item.key] = (region, buffer)
    with _single_process():
        dcp.load({}, storage_reader=dcp.FileSystemReader(str(ckpt_dir)), planner=_RegionLoadPlanner(regions),
                 no_dist=True)
    return out

