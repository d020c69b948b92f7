"""Process groups, devices and seeds: torch.distributed plus megatron-core's model-parallel groups.

`initialize` creates megatron's groups once and keeps them as one `ProcessGroupCollection` on the
`Runtime`. The model is built in it (`build_model(pg_collection=...)`, down to every layer), and
the rest reads it from the runtime or from the model (`model.pg_collection`, megatron's own
attribute): the schedule (`pg_collection`, `p2p_communicator`), DDP and the distributed optimizer,
gradient reductions and clipping, seeds, losses, metrics and checkpoints. megatron's global
`parallel_state` stays initialized for what megatron-core 0.16.1 offers no group argument:

- `initialize_model_parallel` / `destroy_model_parallel` (here): the only constructor of megatron's groups.
- `build_model` / `DLLMCoreAttention` given no collection (decoding, tools, tests): megatron's default, the globals.
- `vocab_parallel_cross_entropy` (GPTModel's unfused loss) reads the TP group, rank and size: it takes no group.
- `RowParallelLinear.forward` hands its matmul `tp_group=None`, which looks up the global TP group (unused there).
- `tie_embeddings_and_output_weights_state_dict` (tied, PP > 1) reads the global DP x CP rank for a replica id.
"""

from __future__ import annotations

import gc
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection

from dtrpo_mega import quiet
from dtrpo_mega.parallel import cpu_shims
from dtrpo_mega.parallel.layout import ParallelConfig


@dataclass(frozen=True)
class Runtime:
    """This process's place in the layout and its process groups (`pg_collection`)."""

    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    cp: int
    ep: int
    device: torch.device
    pg_collection: ProcessGroupCollection

    @property
    def tp_rank(self) -> int:
        return self.pg_collection.tp.rank()

    @property
    def pp_rank(self) -> int:
        return self.pg_collection.pp.rank()

    @property
    def dp_rank(self) -> int:
        return self.pg_collection.dp.rank()

    @property
    def cp_rank(self) -> int:
        return self.pg_collection.cp.rank()

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_from_slurm(env: dict) -> dict:
    """torchrun's variables from an `srun` task's (one task per GPU), unless torchrun set them.

    MASTER_ADDR must come from the launcher (the first host of the allocation); the port defaults
    to 29500 offset by the job id, so two jobs sharing a node do not collide.
    """
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    if "MASTER_ADDR" not in env:
        raise RuntimeError("under srun, export MASTER_ADDR (the first host of $SLURM_JOB_NODELIST) before launching")
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_PORT": env.get("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 10000)),
    }


def init_distributed(backend: str = "auto") -> None:
    """Join torchrun's (or srun's) process group; a plain `python` process becomes a world of one."""
    if dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    os.environ.update(env_from_slurm(dict(os.environ)))
    if "RANK" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


def initialize(parallel: ParallelConfig, seed: int = 1234) -> Runtime:
    """Initialize the model-parallel groups (kept if they already have this layout, made anew
    otherwise) and seed every generator."""
    with quiet.no_gloo_banner():  # every gloo group prints a banner on torch 2.9.1
        init_distributed(parallel.backend)
        world = dist.get_world_size()
        tp, pp, cp = (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                      parallel.context_parallel_size)
        ep, etp = parallel.expert_model_parallel_size, parallel.expert_tensor_parallel_size
        dp = parallel.data_parallel_size(world)
        if etp > 1 and dist.get_backend() == "gloo":
            raise ValueError(f"parallel.expert_tensor_parallel_size={etp} needs NCCL: megatron-core's token dispatcher "
                             "all-gathers unequal token counts over the expert-TP group, which gloo cannot; use 1 on "
                             "CPU ranks")
        if not same_layout(tp, pp, cp, ep, etp):
            if parallel_state.model_parallel_is_initialized():
                parallel_state.destroy_model_parallel()
                destroy_subgroups()
                gc.collect()  # models of earlier layouts, in reference cycles, hold their destroyed groups
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                                     context_parallel_size=cp, expert_model_parallel_size=ep,
                                                     expert_tensor_parallel_size=etp)
    groups = ProcessGroupCollection.use_mpu_process_groups()  # every group megatron made, taken once
    set_seeds(seed, groups)
    quiet.report()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return Runtime(dist.get_rank(), world, tp, pp, dp, cp, ep, device, groups)


def same_layout(tp: int, pp: int, cp: int, ep: int = 1, etp: int = 1) -> bool:
    """Whether megatron's groups exist with these sizes (on the current default group)."""
    return parallel_state.model_parallel_is_initialized() and (
        parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_pipeline_model_parallel_world_size(),
        parallel_state.get_context_parallel_world_size(), parallel_state.get_expert_model_parallel_world_size(),
        parallel_state.get_expert_tensor_parallel_world_size()) == (tp, pp, cp, ep, etp)


def destroy_subgroups() -> None:
    """Destroy every process group but the default one. megatron's `destroy_model_parallel` only
    forgets its groups, and each gloo group keeps its threads (a TCP loop and two workers), which
    wake while idle: 15 re-initializations in one process left 780 threads using 0.28 of a core
    while it slept (66 threads and 0.035 with this)."""
    default = dist.distributed_c10d._get_default_group()
    for group in list(dist.distributed_c10d._world.pg_map):
        if group is not default:
            dist.destroy_process_group(group)


def set_seeds(seed: int, groups: ProcessGroupCollection) -> None:
    """Per pipeline stage seeds (Megatron-LM's +100 * stage, so stages do not start identical);
    equal across TP ranks (weights are initialized whole, then split), TP-offset RNG regions."""
    torch.manual_seed(seed + 100 * groups.pp.rank())
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed, tp_rank=groups.tp.rank(), ep_rank=groups.ep.rank(),
                                        etp_rank=groups.expt_tp.rank())
    else:
        cpu_shims.install(seed, groups.tp.rank(), groups.ep.rank(), groups.expt_tp.rank())


def comm_device() -> torch.device:
    """Where the tensors of small collectives (flags, metric sums) live: the GPU under NCCL."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
