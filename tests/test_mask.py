"""The mask predicate against a literal, loop-by-loop reading of the method doc (section 3)."""

import pytest
import torch

from dtrpo_mega.diffusion.mask import (
    MaskVariant,
    TokenLayout,
    block_diffusion_sample,
    collate,
    plain_sample,
)


def brute_force_doubled(n: int, block: int) -> torch.Tensor:
    """The doc's rule for the full [z~ ; y0] sequence of length 2n, by index."""
    allowed = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for q in range(2 * n):
        for k in range(2 * n):
            q_noisy, k_noisy = q < n, k < n
            bq, bk = (q % n) // block, (k % n) // block
            if q_noisy and k_noisy:
                allowed[q, k] = bq == bk
            elif q_noisy and not k_noisy:
                allowed[q, k] = bk < bq
            elif not q_noisy and not k_noisy:
                allowed[q, k] = bk <= bq
            else:
                allowed[q, k] = False
    return allowed


CASES = [(8, 4, 0), (8, 4, 4), (10, 4, 3), (13, 4, 6), (7, 3, 1), (16, 8, 5), (9, 1, 2), (12, 32, 5)]


@pytest.mark.parametrize("n,block,prompt_len", CASES)
def test_block_diffusion_matches_brute_force(n, block, prompt_len):
    clean = torch.arange(100, 100 + n)
    noisy = torch.full((n,), 7)
    sample = block_diffusion_sample(noisy, clean, prompt_len, block)
    _, layout = collate([sample], MaskVariant.BLOCK_DIFFUSION, block, pad_id=0)
    got = layout.allowed()[0, 0]

    # The layout keeps the noisy copies from the block holding the first response token on.
    start = (prompt_len // block) * block
    keep = list(range(start, n)) + list(range(n, 2 * n))
    expected = brute_force_doubled(n, block)[keep][:, keep]
    assert torch.equal(got, expected)
    assert torch.equal(sample.tokens, torch.cat([noisy[start:], clean]))
    assert torch.equal(sample.positions, torch.tensor(keep) % n)


@pytest.mark.parametrize("n,block,prompt_len", CASES)
def test_dropping_prompt_only_noisy_blocks_changes_no_response_row(n, block, prompt_len):
    """Rows and columns of response tokens are the same as in the full 2n layout."""
    full = brute_force_doubled(n, block)
    start = (prompt_len // block) * block
    dropped = list(range(0, start))
    # No kept token attends to a dropped noisy prompt token.
    kept = [i for i in range(2 * n) if i not in dropped]
    assert not full[kept][:, dropped].any()


def test_bidirectional_and_causal():
    tokens = torch.arange(5)
    _, bi = collate([plain_sample(tokens)], MaskVariant.BIDIRECTIONAL, 4, pad_id=0)
    _, causal = collate([plain_sample(tokens)], MaskVariant.CAUSAL, 4, pad_id=0)
    assert bi.allowed()[0, 0].all()
    assert torch.equal(causal.allowed()[0, 0], torch.tril(torch.ones(5, 5, dtype=torch.bool)))


def test_padding_and_segments_are_isolated():
    a = block_diffusion_sample(torch.zeros(6, dtype=torch.long), torch.arange(6), 2, 2)
    b = block_diffusion_sample(torch.zeros(9, dtype=torch.long), torch.arange(9), 4, 2)
    tokens, layout = collate([a, b], MaskVariant.BLOCK_DIFFUSION, 2, pad_id=-1, pad_to_multiple=8)
    assert tokens.shape == (2, 16)  # 4 + 6 and 5 + 9 tokens, padded to a multiple of 8
    allowed = layout.allowed()[:, 0]
    for row in range(2):
        real = layout.segments[row] > 0
        assert not allowed[row][real][:, ~real].any(), "a real token attends padding"
        assert not allowed[row][~real][:, real].any(), "padding attends a real token"
        assert allowed[row].any(dim=-1).all(), "an empty mask row would give NaN"

    # Two samples packed in one row (segments 1 and 2) never see each other.
    packed = TokenLayout(
        positions=torch.tensor([[0, 1, 2, 0, 1, 2]]),
        noisy=torch.zeros(1, 6, dtype=torch.bool),
        segments=torch.tensor([[1, 1, 1, 2, 2, 2]]),
        variant=MaskVariant.BIDIRECTIONAL,
        block_size=2,
    )
    m = packed.allowed()[0, 0]
    assert m[:3, :3].all() and m[3:, 3:].all() and not m[:3, 3:].any() and not m[3:, :3].any()


def test_layout_validation_errors():
    z = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="noisy half"):
        TokenLayout(z, torch.ones(1, 4, dtype=torch.bool), z + 1, MaskVariant.CAUSAL, 2)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        TokenLayout(z, torch.zeros(1, 3, dtype=torch.bool), z, MaskVariant.CAUSAL, 2)
    with pytest.raises(ValueError, match="prompt_len"):
        block_diffusion_sample(torch.zeros(4), torch.zeros(4), 4, 2)
