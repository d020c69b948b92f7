"""Launcher environments: torchrun's variables win; srun tasks are mapped; errors are explicit."""

import os

import pytest

from dtrpo_mega.parallel.runtime import env_from_slurm


def test_srun_task_becomes_a_torch_distributed_rank():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "MASTER_ADDR": "node01"}
    assert env_from_slurm(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_PORT": str(29500 + 3456)}


def test_torchrun_variables_win_and_plain_processes_are_untouched():
    assert env_from_slurm({"RANK": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}) == {}
    assert env_from_slurm({}) == {}


def test_srun_without_master_addr_says_what_to_export():
    with pytest.raises(RuntimeError, match="export MASTER_ADDR"):
        env_from_slurm({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_parallel_layout_must_divide_the_world(world_of_one):
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    with pytest.raises(ValueError, match="world size 1 is not divisible by TP=2 x PP=1"):
        initialize(ParallelConfig(2, 1))


def test_initializing_the_same_layout_again_keeps_its_groups(world_of_one):
    """Tools and tests initialize again in one process: the same layout reuses megatron's groups
    instead of leaving gloo groups (and their polling threads) behind."""
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    first = initialize(ParallelConfig(), seed=1)
    threads = len(os.listdir("/proc/self/task"))
    again = [initialize(ParallelConfig(), seed=2) for _ in range(5)]
    groups = lambda r: (r.pg_collection.tp, r.pg_collection.pp, r.pg_collection.dp_cp)  # noqa: E731
    assert all(a is b for r in again for a, b in zip(groups(r), groups(first)))
    assert len(os.listdir("/proc/self/task")) <= threads
