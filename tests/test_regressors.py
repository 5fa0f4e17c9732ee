import numpy as np
import pytest
import torch
from text_fixtures import one_thread  # noqa: F401  (fixture)

from extract.core.errors import UserError
from retrieval.losses import compute_loss, vse_loss
from retrieval.metrics import rank_metrics, ranks
from retrieval.query import gru_forward, mlp_forward
from retrieval.regressors import (
    make_regressor,
    regressor_config,
    regressor_from_numpy,
    state_to_numpy,
)


def test_numpy_mlp_forward_equals_torch():
    torch.manual_seed(0)
    model = make_regressor("mlp", 7, 5, hidden=16).eval()
    x = np.random.default_rng(0).standard_normal((9, 7)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mlp_forward(state_to_numpy(model), x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden,out", [(6, 5), (5, 5)])  # with and without the projection
def test_numpy_gru_forward_equals_torch_packed(hidden, out):
    torch.manual_seed(0)
    model = make_regressor("gru", 4, out, hidden=hidden, layers=2).eval()
    assert (model.proj is None) == (hidden == out)
    rng = np.random.default_rng(1)
    lengths = np.array([5, 1, 3, 2, 5, 4])
    x = rng.standard_normal((6, 5, 4)).astype(np.float32)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
    got = gru_forward(state_to_numpy(model), x, lengths, layers=2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # padding does not change a sequence's encoding
    longer = np.concatenate([x, np.full((6, 3, 4), 7.0, np.float32)], axis=1)
    np.testing.assert_allclose(gru_forward(state_to_numpy(model), longer, lengths, layers=2), got, rtol=1e-6, atol=1e-6)
    back = regressor_from_numpy(regressor_config("gru", model), state_to_numpy(model))
    with torch.no_grad():
        np.testing.assert_array_equal(back(torch.from_numpy(x), torch.from_numpy(lengths)).numpy(), ref)


pytestmark = pytest.mark.usefixtures("one_thread")


def _planted(n=200, d=8, out=12, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, out)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, np.tanh(x @ w).astype(np.float32)


@pytest.mark.parametrize("loss", ["mse", "cosine", "vse"])
def test_mlp_learns_a_planted_mapping_with_each_loss(loss):
    torch.manual_seed(0)
    x, y = _planted()
    model = make_regressor("mlp", 8, 12, hidden=64, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def recall5():
        with torch.no_grad():
            return rank_metrics(ranks(model(xt).numpy(), y, np.arange(len(y))))["recall@5"]

    with torch.no_grad():
        before_loss, before_r = float(compute_loss(loss, model(xt), yt)), recall5()
    for _ in range(150):
        opt.zero_grad()
        compute_loss(loss, model(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        after_loss, after_r = float(compute_loss(loss, model(xt), yt)), recall5()
    assert after_loss < 0.5 * before_loss
    assert after_r > before_r + 0.3 and after_r > 0.6


def test_gru_learns_order_sensitive_planted_mapping():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, t, d = 160, 4, 6
    lengths = rng.integers(2, t + 1, size=n)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    for i, m in enumerate(lengths):
        x[i, m:] = 0
    y = np.stack([x[i, : lengths[i]].cumsum(0)[-1] + x[i, 0] for i in range(n)]).astype(np.float32)  # first word counts double
    model = make_regressor("gru", d, d, hidden=32, layers=2, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, lt, yt = torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(y)

    def evaluate():
        with torch.no_grad():
            pred = model(xt, lt)
            return float(compute_loss("vse", pred, yt)), rank_metrics(ranks(pred.numpy(), y, np.arange(n)))["recall@5"]

    loss0, r0 = evaluate()
    for _ in range(60):
        opt.zero_grad()
        compute_loss("vse", model(xt, lt), yt).backward()
        opt.step()
    loss1, r1 = evaluate()
    assert loss1 < 0.5 * loss0 and r1 > r0 + 0.3


def test_vse_loss_reference_values():
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    s = torch.nn.functional.normalize(pred, dim=1) @ torch.nn.functional.normalize(target, dim=1).T
    m = 0.2
    ref = 0.0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        ref += max(0.0, m - s[i, i] + max(s[i, j] for j in others))  # hardest image for caption i
        ref += max(0.0, m - s[i, i] + max(s[j, i] for j in others))  # hardest caption for image i
    assert float(vse_loss(pred, target, margin=m)) == pytest.approx(float(ref) / 3, rel=1e-6)
    # captions of the same image are not negatives of each other
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(vse_loss(same, same, margin=m, image_ids=torch.tensor([4, 4]))) == 0.0
    assert float(vse_loss(same, same, margin=m)) == pytest.approx(2 * m)


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown loss"):
        compute_loss("hinge", torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(UserError, match="unknown regressor"):
        make_regressor("lstm", 2, 2)
