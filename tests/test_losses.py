"""Loss types against direct formulas; sigmoid on a causal layout is ordinary DPO; metrics."""

import math

import pytest
import torch

from dtrpo_mega.diffusion.mask import MaskVariant, collate, plain_sample
from dtrpo_mega.losses.preference import LossConfig, LossType, dtrpo_loss, pair_losses
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config


def _logsig(x):
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("lw,ll", [(0.7, -0.4), (-1.3, 0.2), (0.0, 0.0), (5.0, -6.0)])
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_each_loss_type_matches_its_formula(lw, ll, beta, eps):
    logits = lw - ll
    h = beta * logits
    lengths = (4.0, 5.0)
    expected = {
        LossType.SIGMOID: -_logsig(h) * (1 - eps) - _logsig(-h) * eps,
        LossType.IPO: (lw / lengths[0] - ll / lengths[1] - 1 / (2 * beta)) ** 2,  # TRL: log-ratios per token
        LossType.ROBUST: (-_logsig(h) * (1 - eps) + _logsig(-h) * eps) / (1 - 2 * eps),
        LossType.HINGE: max(0.0, 1 - h),
    }
    for loss_type, value in expected.items():
        cfg = LossConfig(beta=beta, loss_type=loss_type, label_smoothing=eps)
        got = pair_losses(torch.tensor([[lw, ll]], dtype=torch.float64), torch.tensor([lengths], dtype=torch.float64),
                          cfg)
        assert got.item() == pytest.approx(value, rel=1e-12, abs=1e-12), loss_type
    unnormalized = LossConfig(beta=beta, loss_type=LossType.IPO, ipo_length_normalized=False)
    got = pair_losses(torch.tensor([[lw, ll]], dtype=torch.float64), torch.tensor([lengths], dtype=torch.float64),
                      unnormalized)
    assert got.item() == pytest.approx((logits - 1 / (2 * beta)) ** 2, rel=1e-12, abs=1e-12)


def test_rows_of_a_sequence_add_up_and_metrics_follow_trl():
    # pair 0: chosen in rows 0 and 1 (e.g. VRPO samples), rejected in row 2; pair 1: rows 3, 4.
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0], [-3.0, -1.0], [-0.2, -0.2], [-4.0, 0.0]])
    weights = torch.tensor([[1.0, 0.5], [2.0, 0.0], [1.0, 1.0], [3.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    rows = _rows(weights, sequence=[0, 0, 1, 2, 3], pairs=2)
    sums = rows.sequence_sums(logps)
    torch.testing.assert_close(sums, torch.tensor([[-3.0, -4.0], [-0.6, -2.0]], dtype=torch.float64))
    assert rows.scored_tokens() == 8  # non-zero weights: 2 + 1 + 2 + 1 + 2

    ref = torch.tensor([[-2.5, -3.0], [-1.0, -1.0]], dtype=torch.float64)
    cfg = LossConfig(beta=0.5, nll_weight=0.1, nll_normalization="sequence")
    lengths = torch.tensor([[4.0, 5.0], [2.0, 3.0]], dtype=torch.float64)
    loss_sum, report = dtrpo_loss(sums, ref, lengths, cfg)
    ratios = sums - ref  # [[-0.5, -1.0], [0.4, -1.0]]
    nll = -sums[:, 0] / lengths[:, 0]
    dpo = -torch.nn.functional.logsigmoid(0.5 * (ratios[:, 0] - ratios[:, 1]))
    assert report["pairs"].item() == 2
    torch.testing.assert_close(loss_sum, (dpo + 0.1 * nll).sum())
    # TRL's NLL term: the chosen tokens' mean over the whole batch (given the global batch's pairs per token)
    trl, _ = dtrpo_loss(sums, ref, lengths, LossConfig(beta=0.5, nll_weight=0.1))
    torch.testing.assert_close(trl / 2, dpo.mean() + 0.1 * -sums[:, 0].sum() / lengths[:, 0].sum())
    global_batch, _ = dtrpo_loss(sums, ref, lengths, LossConfig(beta=0.5, nll_weight=0.1),
                                 pairs_per_chosen_token=4 / 20)
    torch.testing.assert_close(global_batch, dpo.sum() + 0.1 * -sums[:, 0].sum() * 4 / 20)
    assert report["rewards/chosen"].item() == pytest.approx(0.5 * (-0.5 + 0.4))
    assert report["rewards/rejected"].item() == pytest.approx(0.5 * (-1.0 - 1.0))
    assert report["rewards/accuracies"].item() == 2.0
    assert report["rewards/margins"].item() == pytest.approx(0.5 * (0.5 + 1.4))
    assert report["logps/chosen"].item() == pytest.approx(-3.6)


def test_sigmoid_on_a_causal_layout_is_dpo(world_of_one):
    """Scoring every response token of a causal layout (shifted) turns dTRPO into DPO."""
    cfg = model_config("sdar", num_layers=2)
    torch.manual_seed(3)
    policy = build_model(cfg).double()
    torch.manual_seed(4)
    reference = build_model(cfg).double()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 200, (5,), generator=g)
    chosen, rejected = torch.randint(0, 200, (6,), generator=g), torch.randint(0, 200, (4,), generator=g)
    seqs = [torch.cat([prompt, chosen]), torch.cat([prompt, rejected])]
    tokens, layout = collate([plain_sample(s) for s in seqs], MaskVariant.CAUSAL, cfg.block_size, pad_id=0)

    def causal_token_logps(model):
        logps = model(tokens, layout).log_softmax(-1)
        labels = torch.zeros_like(tokens)
        labels[:, :-1] = tokens[:, 1:]  # the logit at j-1 scores token j
        return logps.gather(-1, labels[..., None])[..., 0]

    weights = torch.zeros(tokens.shape, dtype=torch.float64)
    for r, resp in enumerate((chosen, rejected)):
        weights[r, len(prompt) - 1 : len(prompt) - 1 + len(resp)] = 1.0
    policy_lp, ref_lp = causal_token_logps(policy), causal_token_logps(reference).detach()
    rows = _rows(weights, sequence=[0, 1], pairs=1)
    beta = 0.3
    loss, _ = dtrpo_loss(rows.sequence_sums(policy_lp), rows.sequence_sums(ref_lp), torch.tensor([[6.0, 4.0]]),
                         LossConfig(beta=beta))

    def sequence_logp(model, seq, n_prompt):  # DPO's log pi(y | x), token by token
        logps = model(seq[None],
                      collate([plain_sample(seq)], MaskVariant.CAUSAL, cfg.block_size, 0)[1])[0].log_softmax(-1)
        return sum(logps[j - 1, seq[j]] for j in range(n_prompt, len(seq)))

    dpo_logits = (sequence_logp(policy, seqs[0], 5) - sequence_logp(reference, seqs[0], 5)) - (
        sequence_logp(policy, seqs[1], 5) - sequence_logp(reference, seqs[1], 5))
    dpo = -torch.nn.functional.logsigmoid(beta * dpo_logits)
    torch.testing.assert_close(loss, dpo, rtol=1e-10, atol=1e-12)


def test_loss_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="loss.loss_type='kto'"):
        LossConfig(loss_type="kto")
    with pytest.raises(ValueError, match="loss.beta"):
        LossConfig(beta=0)
    with pytest.raises(ValueError, match="loss.label_smoothing"):
        LossConfig(label_smoothing=0.5)


def _rows(weights, sequence, pairs):
    """ScoredRows whose row r belongs wholly to sequence[r] (= 2 * pair + role); only weights matter."""
    from dtrpo_mega.diffusion.mask import MaskVariant, TokenLayout
    from dtrpo_mega.rows import ScoredRows

    zeros = torch.zeros(weights.shape, dtype=torch.long)
    layout = TokenLayout(zeros, torch.zeros(weights.shape, dtype=torch.bool), zeros + 1, MaskVariant.CAUSAL, 1)
    seq = torch.tensor(sequence)[:, None].expand(weights.shape)
    return ScoredRows(zeros, layout, zeros, weights, seq, torch.arange(pairs),
                      torch.ones(pairs, 2, dtype=torch.float64), 0)
