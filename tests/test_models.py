"""Model tests: every registered model on a small synthetic schema."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctr.config import ConfigError, ExperimentConfig, build_config
from ctr.data.schema import DatasetSchema, FeatureType, FieldSchema
from ctr.models import (
    MODEL_REGISTRY,
    BaseCTRModel,
    DeepFM,
    create_model,
    list_models,
    register_model,
)
from ctr.utils import seed_everything
from tests.test_layers import make_batch as layer_batch

B = 8
EXPECTED_MODELS = ["attention_deepfm", "deepfm", "fm", "lr", "sasrec", "xdeepfm"]
# the models that read any schema; sasrec needs a history field (tests/test_history_layers.py)
CTR_MODELS = [n for n in EXPECTED_MODELS if n != "sasrec"]


def make_schema() -> DatasetSchema:
    return DatasetSchema(
        (
            FieldSchema("user_id", FeatureType.SPARSE, 20, 8),
            FieldSchema("movie_id", FeatureType.SPARSE, 30, 6),
            FieldSchema("age", FeatureType.DENSE, 1, 4),
            FieldSchema("gender", FeatureType.SPARSE, 3, 8),
            FieldSchema("genres", FeatureType.SEQUENCE, 9, 8, max_length=4),
        )
    )


def make_config(*overrides: str) -> ExperimentConfig:
    small = [
        "fm.embed_dim=8",
        "dnn.hidden_units=[16, 8]",
        "cin.layer_sizes=[6, 4]",
        "attention.num_heads=2",
        "attention.attention_dim=4",
    ]
    return build_config({}, [*small, *overrides])


def make_batch(schema: DatasetSchema, seed: int = 0) -> dict[str, torch.Tensor]:
    """B random rows of `schema` (the layer tests' batches: unknown ids, empty sequences)."""
    return layer_batch(schema, B, seed)


@pytest.fixture(params=CTR_MODELS)
def name(request) -> str:
    return request.param


def test_registry_lists_every_model():
    assert list_models() == EXPECTED_MODELS
    for n in EXPECTED_MODELS:
        assert MODEL_REGISTRY[n].model_name == n
        assert issubclass(MODEL_REGISTRY[n], BaseCTRModel)


def test_create_model_shapes_predict_and_l2(name):
    schema = make_schema()
    model = create_model(name, schema, make_config())
    assert isinstance(model, MODEL_REGISTRY[name])
    assert model.model_name == name
    batch = make_batch(schema)
    logits = model(batch)
    assert logits.shape == (B, 1)
    assert torch.isfinite(logits).all()
    model.eval()
    probs = model.predict(batch)
    assert probs.shape == (B, 1) and not probs.requires_grad
    assert ((probs >= 0) & (probs <= 1)).all()
    torch.testing.assert_close(probs, torch.sigmoid(model(batch)).detach())
    l2 = model.get_l2_reg_loss()
    assert l2.dim() == 0 and l2.item() > 0 and l2.requires_grad
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_l2_covers_embedding_tables_only():
    model = create_model("deepfm", make_schema(), make_config())
    expected = sum(p.square().sum() for p in model.embedding.embedding_parameters())
    torch.testing.assert_close(model.get_l2_reg_loss(), expected)
    with torch.no_grad():
        for p in model.embedding.embedding_parameters():
            p.zero_()
    assert model.get_l2_reg_loss().item() == 0.0  # the DNN and bias are not penalised


@pytest.mark.parametrize("batch_norm", [False, True])
def test_gradient_reaches_every_parameter(name, batch_norm):
    schema = make_schema()
    torch.manual_seed(0)
    model = create_model(name, schema, make_config(f"dnn.use_batch_norm={batch_norm}"))
    model.train()
    batch = make_batch(schema)
    labels = torch.randint(0, 2, (B, 1)).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
    (loss + 1.0e-3 * model.get_l2_reg_loss()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


def test_lr_has_no_second_order_embeddings():
    model = create_model("lr", make_schema(), make_config())
    tables = model.embedding.embedding_parameters()
    assert tables and all(t.shape[-1] == 1 for t in tables)  # first-order weights only
    fm = create_model("fm", make_schema(), make_config())
    assert model.num_parameters() < fm.num_parameters()


def test_models_read_their_config_sections():
    schema = make_schema()
    x = create_model("xdeepfm", schema, make_config("cin.layer_sizes=[4, 4, 2]"))
    assert x.cin.layer_sizes == [4, 4, 2] and x.cin.output_dim == 2 + 2 + 2
    d = create_model("deepfm", schema, make_config("dnn.hidden_units=[5]", "dnn.activation=tanh"))
    assert d.dnn.output_dim == 5 and isinstance(d.dnn.layers[1], torch.nn.Tanh)
    a = create_model("attention_deepfm", schema, make_config("attention.num_layers=3"))
    assert len(a.attention.layers) == 3
    assert a.attention.output_dim == 8  # (B, F, D) -> (B, F, D) with D = fm.embed_dim
    assert a.dnn.input_dim == schema.num_fields * 8 + schema.total_embedding_dim
    with pytest.raises(ConfigError, match="even"):  # refused by the config, before the CIN
        make_config("cin.layer_sizes=[5, 4]")


def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError, match="deepfm.*xdeepfm.*'wide_deep'"):
        create_model("wide_deep", make_schema(), make_config())


def test_register_model_adds_a_new_model():
    @register_model("tmp_bias_only")
    class BiasOnly(BaseCTRModel):
        uses_embeddings = False

        def _build_components(self) -> None:
            pass

        def _forward_components(self, first_order, field_embeddings, flat_embeddings):
            return first_order

    try:
        assert "tmp_bias_only" in list_models()
        model = create_model("tmp_bias_only", make_schema(), make_config())
        assert isinstance(model, BiasOnly) and model.model_name == "tmp_bias_only"
        with pytest.raises(ValueError, match="already registered"):
            register_model("tmp_bias_only")(DeepFM)
        with pytest.raises(ValueError, match="BaseCTRModel"):
            register_model("not_a_model")(torch.nn.Linear)
    finally:
        MODEL_REGISTRY.pop("tmp_bias_only")
    assert list_models() == EXPECTED_MODELS


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("movie_id", None, "missing field 'movie_id'"),
        ("movie_id", torch.ones(B), "field 'movie_id'.*int64.*float32"),
        ("age", torch.ones(B, dtype=torch.int64), "field 'age'.*float"),
        ("genres", torch.ones(B, 2, dtype=torch.int64), r"field 'genres'.*\(B, 4\).*\(8, 2\)"),
    ],
)
def test_malformed_batch_raises_in_training_and_in_scoring(name, field, value, message):
    """The embedding's batch checks (all of them in tests/test_layers.py) guard every
    model, in training and in no-grad eval scoring, which may chunk the batch first."""
    model = create_model(name, make_schema(), make_config())
    batch = {k: v for k, v in make_batch(model.schema).items() if k != field}
    if value is not None:
        batch[field] = value
    for training in (True, False):
        model.train(training)
        with torch.set_grad_enabled(training), pytest.raises(ValueError, match=message):
            model(batch)


def test_constructor_rejects_wrong_argument_types():
    with pytest.raises(ValueError, match="DatasetSchema"):
        DeepFM({"fields": []}, make_config())
    with pytest.raises(ValueError, match="ExperimentConfig"):
        DeepFM(make_schema(), {"fm": {"embed_dim": 8}})


def test_seeded_creation_is_deterministic(name):
    schema = make_schema()
    batch = make_batch(schema)

    def build(seed: int):
        seed_everything(seed)
        model = create_model(name, schema, make_config()).eval()
        return model.state_dict(), model(batch)

    state_a, out_a = build(7)
    state_b, out_b = build(7)
    state_c, out_c = build(8)
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, out_c)


def test_pickle_and_state_dict_round_trip(name):
    schema = make_schema()
    model = create_model(name, schema, make_config()).eval()
    batch = make_batch(schema)
    expected = model(batch)

    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is type(model)
    assert clone.schema == schema and clone.config == model.config
    assert torch.equal(clone.eval()(batch), expected)

    fresh = create_model(name, schema, make_config())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(batch), expected)


def test_chunked_inference_equals_whole_batch(name):
    schema = make_schema()
    model = create_model(name, schema, make_config("dnn.use_batch_norm=true")).eval()
    batch = dict(make_batch(schema), label=torch.ones(B))  # extra keys are ignored
    whole = model(batch).detach()  # grad enabled: never chunked
    model.inference_chunk_rows = 3
    assert model._inference_chunk(batch) == 3
    with torch.no_grad():
        torch.testing.assert_close(model(batch), whole)
        torch.testing.assert_close(model.predict(batch), torch.sigmoid(whole))
    # In training mode batch norm uses batch statistics: such a forward is never chunked.
    model.train()
    torch.manual_seed(0)
    expected = model(batch).detach()
    torch.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), expected)
    with pytest.raises(ValueError, match="missing field 'age'"):
        with torch.no_grad():
            model.eval()({k: v for k, v in batch.items() if k != "age"})


def test_eval_batches_and_single_rows_agree():
    """A large no-grad batch scores each row as it would alone (no cross-row leakage)."""
    schema = make_schema()
    model = create_model("attention_deepfm", schema, make_config("dnn.use_batch_norm=true")).eval()
    batch = make_batch(schema)
    full = model.predict(batch)
    for i in (0, 3, B - 1):
        row = {k: v[i : i + 1] for k, v in batch.items()}
        torch.testing.assert_close(model.predict(row), full[i : i + 1])


def test_pickled_model_loads_in_a_fresh_process(tmp_path):
    """As mlflow.pytorch does with serialization_format="pickle": only `ctr` on the path."""
    schema = make_schema()
    model = create_model("xdeepfm", schema, make_config()).eval()
    batch = make_batch(schema)
    torch.save({"model": model, "batch": batch}, tmp_path / "model.pt")
    torch.save(model(batch).detach(), tmp_path / "expected.pt")
    code = (
        "import torch\n"
        f"d = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)\n"
        f"expected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "m = d['model']\n"
        "assert type(m).__module__ == 'ctr.models.xdeepfm', type(m)\n"
        "assert torch.equal(m(d['batch']), expected)\n"
        "print('ok', m.model_name)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok xdeepfm"
