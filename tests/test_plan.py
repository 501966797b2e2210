"""Every Verify command of the plan the package was specified from, run as written.

The plan was written for a package named `deepfm`; here it is `ctr`, so each
command below is the plan's, copied verbatim with `deepfm` -> `ctr`. (In step
2.3 the plan's Markdown indents the command by two spaces as part of a list
item; it is copied without that indentation, as it renders.) Each runs as a
real subprocess in the repository root with the venv's `python` first on PATH,
and the test checks its exit code and what the step says it prints.

Steps 6.1-6.8 verify by running pytest or `make test && make lint`. Running
those here would run the suite inside the suite, so for them the test checks
that the named test files exist and that `pytest --collect-only` collects
tests from them (6.8: that `make test` runs pytest on the suite, and `make
lint` passes). Step 6.7 is `cat README.md` for a manual review: the test
checks that the README has the sections the step asks for.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, VENV_BIN, subprocess_env

NUM_USERS = 943
TRAIN_ROWS = 98_114 * (1 + 4)  # training positives + 4 sampled negatives each (the default)


@dataclass(frozen=True)
class Step:
    id: str
    command: str  # the plan's Verify command, with deepfm -> ctr
    expect: tuple[str, ...] = ()  # regexes that must each match the output (stdout)
    slow: bool = False  # needs the real data, training, or the test suite


IMPORT_OK = (r"^ok$",)

# Steps 4.2-4.4: one command but for the model's module and class (and 4.2's comment)
MODEL_STEP = """python -c "
import torch
from ctr.data.schema import FieldSchema, DatasetSchema, FeatureType
from ctr.config import ExperimentConfig
from ctr.models.{module} import {cls}
fields = {{'u': FieldSchema('u', FeatureType.SPARSE, 100, 8), 'i': FieldSchema('i', FeatureType.SPARSE, 200, 16)}}
schema = DatasetSchema(fields=fields, label_field='label')
model = {cls}(schema, ExperimentConfig())
batch = {{'u': torch.tensor([1,2]), 'i': torch.tensor([5,10])}}
print(f'logits: {{model(batch).shape}}'){comment}
\""""
# Steps 2.2 and 2.3 start alike: the adapter builds the data
ADAPTER_BUILT = """python -c "
from ctr.config import ExperimentConfig
from ctr.data.movielens import MovieLensAdapter
adapter = MovieLensAdapter('data/ml-100k', ExperimentConfig().data)
schema, train_ds, val_ds, test_ds = adapter.build()
"""
LOGITS_2X1 = (r"^logits: torch\.Size\(\[2, 1\]\)$",)

STEPS = [
    Step(
        "1.1",
        """make install && python -c "import ctr; print('ok')\"""",
        IMPORT_OK,
    ),
    Step(
        "1.2",
        """python -c "from ctr.utils import seed_everything, get_logger, save_checkpoint, load_checkpoint; print('ok')\"""",
        IMPORT_OK,
    ),
    Step(
        "1.3",
        """python -c "from ctr.config import ExperimentConfig; c = ExperimentConfig(); print(c.model_name, c.training.batch_size)\"""",
        (r"^deepfm 1024$",),
    ),
    Step(
        "1.4",
        """python -c "from ctr.data.schema import FieldSchema, DatasetSchema, FeatureType; f = FieldSchema(name='test', feature_type=FeatureType.SPARSE, vocabulary_size=10, embedding_dim=8); print(f)\"""",
        (
            r"^FieldSchema\(name='test', feature_type=<FeatureType\.SPARSE: 'sparse'>, "
            r"vocabulary_size=10, embedding_dim=8, ",
        ),
    ),
    Step(
        "1.5",
        """python -c "from ctr.data.transforms import LabelEncoder, MultiHotEncoder; le = LabelEncoder(); le.fit(['a','b','c']); print(le.transform(['b','a','z'])); print(le.vocabulary_size)\"""",
        (r"^\[2 1 0\]$", r"^4$"),  # unknown 'z' -> 0; 3 classes + index 0
    ),
    Step(
        "2.1",
        """python -c "
import numpy as np
from ctr.data.dataset import TabularDataset
ds = TabularDataset({'f1': np.array([1,2,3])}, np.array([0,1,0]))
print(ds[0])
print(len(ds))
\"""",
        (r"'f1': tensor\(1\)", r"tensor\(0\.\)", r"^3$"),
    ),
    Step(
        "2.2",
        ADAPTER_BUILT
        + """print(f'Schema fields: {list(schema.fields.keys())}')
print(f'Train: {len(train_ds)}, Val: {len(val_ds)}, Test: {len(test_ds)}')
\"""",
        (
            r"^Schema fields: \['user_id', 'movie_id', 'gender', 'age', 'occupation', "
            r"'zip_prefix', 'genres'\]$",
            rf"^Train: {TRAIN_ROWS}, Val: {NUM_USERS * 1000}, Test: {NUM_USERS * 1000}$",
        ),
        slow=True,
    ),
    Step(
        "2.3",
        ADAPTER_BUILT
        + """print(f'Train (with neg): {len(train_ds)}')
print(f'Val (with neg): {len(val_ds)}')

# Train should be ~5x positive count, val should be ~1000 per user

\"""",
        (
            rf"^Train \(with neg\): {TRAIN_ROWS}$",  # 5x the training positives
            rf"^Val \(with neg\): {NUM_USERS * 1000}$",  # 1 + 999 per user
        ),
        slow=True,
    ),
    Step(
        "3.1",
        """python -c "
import torch
from ctr.data.schema import FieldSchema, DatasetSchema, FeatureType
from ctr.models.layers.embedding import FeatureEmbedding
fields = {
    'u': FieldSchema('u', FeatureType.SPARSE, 100, 8),
    'i': FieldSchema('i', FeatureType.SPARSE, 200, 16),
}
schema = DatasetSchema(fields=fields, label_field='label')
emb = FeatureEmbedding(schema, fm_embed_dim=16)
batch = {'u': torch.tensor([1,2]), 'i': torch.tensor([5,10])}
fo, fe, fl = emb(batch)
print(f'first_order: {fo.shape}, field_emb: {fe.shape}, flat_emb: {fl.shape}')
\"""",
        (
            r"^first_order: torch\.Size\(\[2, 1\]\), field_emb: torch\.Size\(\[2, 2, 16\]\), "
            r"flat_emb: torch\.Size\(\[2, 24\]\)$",
        ),
    ),
    Step(
        "3.2",
        """python -c "
import torch
from ctr.models.layers.fm import FMInteraction
fm = FMInteraction()
x = torch.randn(4, 6, 16)
out = fm(x)
print(f'FM output: {out.shape}')  # (4, 1)
\"""",
        (r"^FM output: torch\.Size\(\[4, 1\]\)$",),
    ),
    Step(
        "3.3",
        """python -c "
import torch
from ctr.models.layers.dnn import DNN
dnn = DNN(64, [128, 64, 32], dropout=0.1, use_batch_norm=True)
x = torch.randn(4, 64)
print(f'DNN output: {dnn(x).shape}')  # (4, 32)
\"""",
        (r"^DNN output: torch\.Size\(\[4, 32\]\)$",),
    ),
    Step(
        "3.4",
        """python -c "
import torch
from ctr.models.layers.cin import CIN
cin = CIN(num_fields=6, embed_dim=16, layer_sizes=[128, 128], split_half=True)
x = torch.randn(4, 6, 16)
out = cin(x)
print(f'CIN output: {out.shape}')  # (4, some_dim)
\"""",
        (r"^CIN output: torch\.Size\(\[4, 192\]\)$",),  # split half: 64 + 128
    ),
    Step(
        "3.5",
        """python -c "
import torch
from ctr.models.layers.attention import MultiHeadSelfAttention
attn = MultiHeadSelfAttention(embed_dim=16, num_heads=4, attention_dim=64, num_layers=2, use_residual=True)
x = torch.randn(4, 6, 16)
out = attn(x)
print(f'Attention output: {out.shape}')  # (4, 6, 16)
\"""",
        (r"^Attention output: torch\.Size\(\[4, 6, 16\]\)$",),
    ),
    Step(
        "3.6",
        """python -c "from ctr.models.layers import FeatureEmbedding, FMInteraction, DNN, CIN, MultiHeadSelfAttention; print('ok')\"""",
        IMPORT_OK,
    ),
    Step(
        "4.1",
        """python -c "from ctr.models.base import BaseCTRModel; print('ok')\"""",
        IMPORT_OK,
    ),
    *(
        Step(step, MODEL_STEP.format(module=module, cls=cls, comment=comment), LOGITS_2X1)
        for step, module, cls, comment in [
            ("4.2", "deepfm", "DeepFM", "  # (2, 1)"),
            ("4.3", "xdeepfm", "xDeepFM", ""),
            ("4.4", "attention_deepfm", "AttentionDeepFM", ""),
        ]
    ),
    Step(
        "4.5",
        """python -c "from ctr.models import create_model; print('ok')\"""",
        IMPORT_OK,
    ),
    Step(
        "5.1",
        """python -c "
import numpy as np
from ctr.training.metrics import compute_auc, compute_logloss, compute_hr_at_k, compute_ndcg_at_k
labels = np.array([0,1,0,1])
scores = np.array([0.1, 0.9, 0.3, 0.8])
print(f'AUC: {compute_auc(labels, scores):.3f}')
print(f'LogLoss: {compute_logloss(labels, scores):.3f}')
\"""",
        # every positive outscores every negative; -mean(ln .9, ln .9, ln .7, ln .8) = 0.198
        (r"^AUC: 1\.000$", r"^LogLoss: 0\.198$"),
    ),
    Step(
        "5.2",
        """python -c "from ctr.training.trainer import Trainer; print('ok')\"""",
        IMPORT_OK,
    ),
    Step(
        "5.3",
        """python -m ctr --help""",
        (r"^Usage: ", r"^\s+train\s"),
    ),
    Step(
        "5.4",
        """python -c "from ctr.config import load_config; c = load_config('configs/deepfm_movielens.yaml'); print(c.model_name)\"""",
        (r"^deepfm$",),
    ),
    Step(
        "5.5",
        """python -m ctr train --config configs/deepfm_movielens.yaml --override training.num_epochs=2 training.batch_size=512""",
        slow=True,  # its output is checked in test_step_5_5
    ),
    Step("6.1", """pytest tests/test_schema.py tests/test_transforms.py -v""", slow=True),
    Step("6.2", """pytest tests/test_dataset.py -v""", slow=True),
    Step("6.3", """pytest tests/test_layers.py -v""", slow=True),
    Step("6.4", """pytest tests/test_models.py -v""", slow=True),
    Step("6.5", """pytest tests/test_trainer.py -v""", slow=True),
    Step("6.6", """pytest tests/test_integration.py -v""", slow=True),
    Step("6.7", """cat README.md"""),
    Step("6.8", """make test && make lint""", slow=True),
]
BY_ID = {s.id: s for s in STEPS}
PYTEST_STEPS = [s for s in STEPS if s.command.startswith("pytest ")]
# Run by the generic test; 5.5 and 6.x have their own tests below.
OUTPUT_STEPS = [s for s in STEPS if s.expect]


def run(command: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`command` in bash, as a user would type it: the venv's python and pytest first on
    PATH, no MLFLOW_TRACKING_URI (MLflow's default store in `cwd`)."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=subprocess_env(None),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_ok(step: Step, proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"step {step.id} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def _params(steps: list[Step]) -> list:
    return [pytest.param(s, id=s.id, marks=[pytest.mark.slow] if s.slow else []) for s in steps]


def test_the_venv_python_comes_first_on_path():
    proc = run("command -v python pytest")
    assert proc.stdout.split() == [str(VENV_BIN / "python"), str(VENV_BIN / "pytest")]
    assert Path(sys.executable).parent == VENV_BIN


def test_every_step_of_the_plan_is_here():
    ids = [s.id for s in STEPS]
    assert ids == sorted(set(ids), key=lambda i: tuple(map(int, i.split("."))))
    phases = {1: 5, 2: 3, 3: 6, 4: 5, 5: 5, 6: 8}  # steps per phase in the plan
    for phase, n in phases.items():
        assert [i for i in ids if i.startswith(f"{phase}.")] == [
            f"{phase}.{k}" for k in range(1, n + 1)
        ]
    # the rename is complete: no `deepfm` package left (configs/deepfm_*.yaml, models.deepfm stay)
    assert not [s.id for s in STEPS if re.search(r"(?<![\w./])deepfm\b(?!_)", s.command)]


@pytest.mark.parametrize("step", _params(OUTPUT_STEPS))
def test_step_prints_what_the_plan_says(step: Step):
    proc = run(step.command)
    assert_ok(step, proc)
    for pattern in step.expect:
        assert re.search(pattern, proc.stdout, re.MULTILINE), (
            f"step {step.id}: no line matching {pattern!r} in:\n{proc.stdout[-3000:]}"
        )


def test_step_1_1_make_install_is_a_no_op_once_installed():
    # `make -q` exits 0 when the target is up to date: step 1.1 then installs nothing.
    proc = subprocess.run(["make", "-q", "install"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, "the venv is not up to date with pyproject.toml: run make install"


@pytest.mark.slow
def test_step_5_5_trains_two_epochs_and_tracks_them(tmp_path):
    """Run in a scratch directory that sees the repo's configs and data, so MLflow's
    default store (./mlflow.db), its artifacts and the checkpoints land there."""
    step = BY_ID["5.5"]
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    repo_db = ROOT / "mlflow.db"
    repo_db_before = repo_db.stat().st_mtime_ns if repo_db.exists() else None
    proc = run(step.command, cwd=tmp_path, timeout=1800)  # ~2 min on 2 idle cores
    assert_ok(step, proc)
    log = proc.stdout + proc.stderr
    assert re.search(r"epoch 1/2 train_loss \d", log), log[-3000:]
    assert re.search(r"epoch 2/2 train_loss \d", log), log[-3000:]
    assert "epoch 3/" not in log
    assert (tmp_path / "mlflow.db").is_file()
    assert (repo_db.stat().st_mtime_ns if repo_db.exists() else None) == repo_db_before

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run_] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'FINISHED'"
    )
    assert run_.data.params["training.num_epochs"] == "2"
    assert run_.data.params["training.batch_size"] == "512"
    assert run_.data.params["model"] == "deepfm"
    steps = [m.step for m in client.get_metric_history(run_.info.run_id, "val_ndcg_at_10")]
    assert sorted(steps) == [1, 2]
    assert 0.5 < run_.data.metrics["test_auc"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("step", _params(PYTEST_STEPS))
def test_pytest_steps_collect_their_tests(step: Step):
    # Not run: that would run these files inside the suite that already runs them.
    files = step.command.split()[1:-1]  # pytest FILE... -v
    assert files and all((ROOT / f).is_file() for f in files), files
    proc = run(f"pytest --collect-only -q {' '.join(files)}")
    assert_ok(step, proc)
    collected = re.search(r"^(\d+) tests? collected", proc.stdout, re.MULTILINE)
    assert collected and int(collected.group(1)) > 0, proc.stdout[-3000:]
    for f in files:  # every named file contributes tests
        assert re.search(rf"^{re.escape(f)}::", proc.stdout, re.MULTILINE), f


@pytest.mark.slow
def test_step_6_8_make_test_runs_the_suite_and_make_lint_passes():
    step = BY_ID["6.8"]
    assert step.command == "make test && make lint"
    dry = run("make -n test")  # what `make test` would run, without running it
    assert_ok(step, dry)
    assert re.search(r"^\S*python -m pytest\b", dry.stdout, re.MULTILINE), dry.stdout
    assert_ok(step, run("make lint"))


def test_step_6_7_readme_has_what_the_step_asks_for():
    step = BY_ID["6.7"]
    proc = run(step.command)
    assert_ok(step, proc)
    readme = proc.stdout
    for heading in ("## Set-up", "## The library", "## Results", "## Tracking"):
        assert re.search(rf"^{heading}", readme, re.MULTILINE), heading
    assert "make install" in readme  # install instructions
    assert "ctr train --config" in readme  # usage
    for model in ("DeepFM", "xDeepFM", "AttentionDeepFM"):
        assert model in readme
    assert "| model | HR@10 | NDCG@10 |" in readme  # the results table
