"""The layout's promises (README "Layout", DESIGN.md), checked on the source: one MLflow
client, one name per class, which package may import which, and facts kept in one place
that two artefacts must agree on."""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "trainer")


def sources(*packages: str) -> dict[str, ast.Module]:
    """module path (relative to the repository) -> its parsed source."""
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text())
            for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    """Every module a source imports, at any depth (lazy imports too): `from a.b import c`
    gives a.b and a.b.c (c may be a module); relative imports keep their dots."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            out |= {module} | {f"{module}.{a.name}".replace("..", ".") if node.module else module + a.name
                               for a in node.names}
    return out


def test_one_module_makes_mlflow_clients():
    users = sorted(path for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                   if re.search(r"\bMlflowClient\b", (path := str(p.relative_to(ROOT))) and p.read_text()))
    assert users == ["orchestrator/store/client.py"]


def test_only_the_store_imports_mlflow():
    """Everything else reaches MLflow through orchestrator/store/ (provenance asks only
    for mlflow's version)."""
    users = sorted(path for path, tree in sources(*PACKAGES).items()
                   if any(m == "mlflow" or m.startswith("mlflow.") for m in imported(tree)))
    assert users == ["orchestrator/run/provenance.py", "orchestrator/store/client.py",
                     "orchestrator/store/write.py"]


def test_no_two_modules_define_a_class_of_the_same_name():
    where: dict[str, list[str]] = {}
    for path, tree in sources(*PACKAGES).items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(path)
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}
    assert len(where) > 40          # the walk saw the tree (it has ~50 classes)


def test_the_trainer_knows_nothing_of_ray_mlflow_yaml_or_the_orchestrator():
    for path, tree in sources("trainer").items():
        bad = {m for m in imported(tree) if m.split(".")[0] in ("ray", "mlflow", "yaml", "orchestrator")}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_results_need_nothing_from_run_but_the_sweep_schema():
    seen = set()
    for path, tree in sources("orchestrator/results").items():
        run = {m for m in imported(tree) if m.startswith("orchestrator.run.")}
        seen |= run
        assert all(m.startswith("orchestrator.run.sweep") for m in run), f"{path} imports {sorted(run)}"
    assert "orchestrator.run.sweep" in seen     # report.py reads sweep files


def test_the_store_needs_nothing_else_of_the_orchestrator():
    """orchestrator/store/ is below run/ and results/: it imports only itself and disk.py."""
    for path, tree in sources("orchestrator/store").items():
        other = {m for m in imported(tree) if m.startswith("orchestrator.")
                 and not m.startswith("orchestrator.store") and m != "orchestrator.disk"}
        assert not other, f"{path} imports {sorted(other)}"


def test_a_sweep_may_reproduce_exactly_what_tables_builds():
    from orchestrator.results import figures, tables
    from orchestrator.run.sweep import ARTEFACTS

    assert ARTEFACTS == tuple(tables.TABLES) + figures.FIGURES


def test_the_fields_a_forecast_ignores_follow_from_the_config_roles():
    """NO_MEMORY is the fields marked memory=False (every execution field by default);
    NO_COST is NO_MEMORY less the fields that may change which kernels run. Pinned: a new
    field lands in one or the other by its declaration, and this says which."""
    from trainer.config import FIELDS, NO_COST, NO_MEMORY, fields_where

    assert fields_where(role="execution") <= NO_MEMORY
    assert NO_MEMORY == {"seed", "alpha_first", "alpha_second", "reg_lambda", "lr", "weight_decay",
                         "epochs", "eval_every", "checkpoint_every", "data_dir", "device", "threads",
                         "compile", "timeline_steps", "representation_analysis", "analysis_samples"}
    assert NO_MEMORY - NO_COST == {"alpha_first", "alpha_second", "reg_lambda", "weight_decay"}
    assert {"width", "batch_size", "image_size", "arch", "regularizer", "dtype", "momentum"} \
        <= set(FIELDS) - NO_MEMORY


def test_the_forecast_cache_ignores_exactly_the_no_memory_fields():
    """Two trials differing only in a NO_MEMORY field share a forecast; one differing in a
    memory field (momentum: its buffers) does not."""
    import trainer.forecast as forecast
    from trainer.config import Config

    base = Config(vgg_width_divisor=16, train_samples=20, test_samples=10, batch_size=5).to_dict()
    forecast._forecast_once.cache_clear()
    first = forecast.forecast_configs([base])
    forecast.forecast_configs([{**base, "seed": 3, "lr": 0.1, "alpha_first": 0.5, "threads": 2}])
    assert forecast._forecast_once.cache_info().misses == 1
    with_momentum = forecast.forecast_configs([{**base, "momentum": 0.9}])
    assert forecast._forecast_once.cache_info().misses == 2 and with_momentum.peak > first.peak
