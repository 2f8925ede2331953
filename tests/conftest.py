"""Shared fixtures: real MNIST from $HPO_DATA_DIR when set, else small synthetic digits in MNIST's own format."""

from __future__ import annotations

import os
import struct
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy
import torch
from typer.testing import CliRunner

from hpo.cli import cli as hpo_cli

torch.set_num_threads(1)
# One worker process per `hpo optimize` unless a test asks for --jobs: tests run the loop in-process.
os.environ.setdefault("HPO_JOBS", "1")


def _write_idx(path: Path, data: torch.Tensor, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in data.shape)
    path.write_bytes(header + data.to(torch.uint8).numpy().tobytes())


def write_synthetic_mnist(root: Path, n_train: int = 3000, n_test: int = 3000, seed: int = 0) -> Path:
    """Digits as ten distinct noisy blob patterns: learnable, tiny, and in torchvision's layout."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(10, 28, 28, generator=gen) > 0.6).float() * 255
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.arange(n) % 10
        noise = torch.rand(n, 28, 28, generator=gen) * 120
        images = (prototypes[labels] * 0.6 + noise).clamp(0, 255)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images, 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels, 2049)
    return root


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("HPO_DATA_DIR")
    if env:
        # Absolute, and exported so: tests run hpo from other folders (a relative path breaks there).
        path = Path(env).resolve()
        os.environ["HPO_DATA_DIR"] = str(path)
        return path
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def real_mnist() -> bool:
    return bool(os.environ.get("HPO_DATA_DIR"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


SMALL_SPEC = """
[study]
name = "{name}"
direction = "maximize"
sampler = "{sampler}"
pruner = "{pruner}"

[train]
folds = 2
epochs = {epochs}
batch_size = 25
train_pairs = 200

[space]
weight_sharing = {{ choices = [true, false] }}
aux_weight     = {{ low = 0.0, high = 2.0 }}
dropout        = {{ low = 0.0, high = 0.6 }}
batch_norm     = {{ choices = [true, false] }}
lr             = {{ low = 1e-4, high = 1e-2, log = true }}
beta1          = {{ low = 0.5, high = 0.99 }}
weight_decay   = {{ low = 1e-6, high = 1e-2, log = true }}
conv1_channels = 8
conv2_channels = 16
hidden = 32
"""


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """A small real spec (200 pairs, 2 folds, narrow net); keyword args fill its blanks, `body` replaces it."""

    def write(
        body: str | None = None, name: str = "small", sampler: str = "tpe", pruner: str = "median", epochs: int = 2
    ) -> Path:
        path = tmp_path / f"{name}.toml"
        text = (
            textwrap.dedent(body)
            if body is not None
            else SMALL_SPEC.format(name=name, sampler=sampler, pruner=pruner, epochs=epochs)
        )
        path.write_text(text)
        return path

    return write


@pytest.fixture
def cli() -> Callable[..., object]:
    """Run `hpo ARGS` in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(hpo_cli, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


EVALUATE_SPEC = """
[study]
name = "fixed"
[train]
epochs = 1
[space]
weight_sharing = true
aux_weight = 1.0
lr = 0.003
batch_norm = true
conv1_channels = 8
conv2_channels = 16
hidden = 32
"""


@pytest.fixture
def evaluate_record(cli, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real `hpo evaluate --json` record of a small fixed spec (2 rounds of 100 pairs, 1 epoch): what
    benchmarks/paired.py reads."""
    monkeypatch.setenv("HPO_DATA_DIR", str(mnist_dir))
    spec = tmp_path / "fixed.toml"
    spec.write_text(EVALUATE_SPEC)
    args = ["evaluate", "--spec", spec, "--rounds", "2", "--pairs", "100", "--threads", "1", "--json"]
    result = cli(*args, "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "record.json"
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> tuple[str, str]:
    """A real 3-trial study (1 epoch, 200 pairs, narrow net) in its own SQLite file: (url, name).

    Shared by the evaluate/report/export tests; tests that write to it compare before and after.
    """
    root = tmp_path_factory.mktemp("small-study")
    spec = root / "small.toml"
    spec.write_text(SMALL_SPEC.format(name="small", sampler="tpe", pruner="none", epochs=1))
    url = f"sqlite:///{root / 'studies.db'}"
    args = ["optimize", "--trials", "3", "--spec", str(spec), "--storage", url, "--data-dir", str(mnist_dir)]
    result = CliRunner().invoke(hpo_cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return url, "small"


POSTGRES_ENV = "HPO_TEST_POSTGRES_URL"
DEFAULT_TEST_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_server() -> sqlalchemy.URL:
    """The PostgreSQL server tests create databases on; in CI a missing server is a failure, not a skip."""
    url = sqlalchemy.make_url(os.environ.get(POSTGRES_ENV, DEFAULT_TEST_POSTGRES))
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5}, poolclass=sqlalchemy.NullPool)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as exc:
        message = (
            f"PostgreSQL at {url.render_as_string(hide_password=True)} is not reachable ({exc.orig}); set "
            f"{POSTGRES_ENV}"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def new_postgres_db(postgres_server: sqlalchemy.URL) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty databases (returns their URLs); all are dropped after the test."""
    admin = sqlalchemy.create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    names: list[str] = []

    def create() -> str:
        names.append(f"hpo_test_{uuid.uuid4().hex[:12]}")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{names[-1]}"'))
        return postgres_server.set(database=names[-1]).render_as_string(hide_password=False)

    yield create
    with admin.connect() as conn:
        for name in names:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(new_postgres_db: Callable[[], str]) -> str:
    """A fresh, empty PostgreSQL database of this test's own."""
    return new_postgres_db()


@pytest.fixture
def trains_the_same_without(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, object, str, float, float], None]:
    """check(cfg, kernels, path, rtol, atol): a 2-member TwinNet in float64 built with `kernels`
    (hpo.kernels.dispatch.Kernels) computes the same answers, digits and gradients, to rtol and
    atol, as one built with PyTorch's operators only, and its forward pass runs hpo.training.model's
    kernel `path` exactly once (the other, none)."""
    import hpo.training.model
    from hpo.kernels.dispatch import TORCH
    from hpo.rng import generator
    from hpo.training.model import TwinNet

    def check(cfg: object, kernels: object, path: str, rtol: float, atol: float) -> None:
        torch.set_default_dtype(torch.float64)
        try:
            x = torch.rand(2, 6, 2, 14, 14, generator=torch.Generator().manual_seed(1))
            results, calls = [], []
            fast_path = getattr(hpo.training.model, path)
            monkeypatch.setattr(hpo.training.model, path, lambda *a: calls.append(1) or fast_path(*a))
            for choice in (kernels, TORCH):
                net = TwinNet(cfg, members=2, kernels=choice).init_([generator(s, "init") for s in range(2)])
                answer, digits = net(x)
                (answer.sum() + digits.square().sum()).backward()
                results.append([answer.detach(), digits.detach()] + [p.grad for p in net.parameters()])
                assert len(calls) == 1, f"one forward through {path}, none on the other path"
            for ours, theirs in zip(*results):
                torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol)
        finally:
            torch.set_default_dtype(torch.float32)

    return check
