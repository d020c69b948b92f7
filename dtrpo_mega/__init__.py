"""dtrpo_mega: dTRPO preference training of diffusion LLMs on megatron-core."""

from dtrpo_mega import quiet as _quiet

_quiet.install()  # before megatron-core is imported: its fallback warnings fire at import
