"""The house rules of the code's layout, read from the code (tools/import_graph.py):
no import circles, models below loops, and no entry point or shared module that asks which
model family it runs (families/ is the only place a family is named)."""
import ast
from dataclasses import replace

import pytest

import families
from config import ConfigError
from families import compose_config, family_of
from tools.import_graph import REPO, circles, floors, import_graph, project_modules

# what a model may import besides other models: the config toolkit (plain_section) and utils
MODEL_DEPENDENCIES = {"config", "utils"}


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_import_graph_finds_a_circle_hidden_in_a_function(tmp_path):
    """The tool itself, on a made-up project: b imports a only inside a function (a lazy import),
    which still ties the two; c imports a relative name of its package."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def late():\n    from a import thing\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "c.py").write_text("from .d import x\nimport os\n")
    (tmp_path / "pkg" / "d.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"a"}, "pkg": set(), "pkg.c": {"pkg.d"}, "pkg.d": set()}
    assert circles(graph) == [["a", "b"]]
    assert floors({"pkg.c": {"pkg.d"}, "pkg.d": set(), "top": {"pkg.c"}}) == {"pkg.c": 1, "pkg.d": 0, "top": 2}


def test_the_project_has_no_import_circle(graph):
    assert {"train", "eval", "run_trainer", "families", "families.rem.trainer", "sub_models.priors"} <= set(graph)
    assert circles(graph) == []


def test_models_import_only_models_and_the_toolkit(graph):
    for module, targets in graph.items():
        if module.startswith("sub_models"):
            above = {t for t in targets if not t.startswith("sub_models") and t not in MODEL_DEPENDENCIES}
            assert not above, f"{module} imports {sorted(above)}: models sit below loops and entry points"


def test_loops_sit_below_the_entry_points(graph):
    floor = floors(graph)
    for loop in ("run_trainer", "families.storm.trainer", "families.rem.trainer", "evaluation"):
        for entry in ("train", "eval", "eval_video"):
            assert floor[loop] < floor[entry], (loop, entry)


def family_name_comparisons(path):
    """(line, text) of every comparison with a registered family's name in a file."""
    names = set(families.FAMILIES)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in names for o in operands):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_nothing_outside_families_branches_on_a_family(tmp_path):
    offenders = {}
    for module, path in project_modules().items():
        if not module.startswith("families"):
            found = family_name_comparisons(path)
            if found:
                offenders[str(path.relative_to(REPO))] = found
    assert offenders == {}
    # the check sees a branch where there is one
    probe = tmp_path / "probe.py"
    probe.write_text('def pick(cfg):\n    return 1 if cfg.BasicSettings.Family == "REM" else 2\n')
    assert family_name_comparisons(probe) == [(2, "cfg.BasicSettings.Family == 'REM'")]


def test_family_key_errors_name_the_families():
    with pytest.raises(ConfigError, match=r"BasicSettings.Family='STROM': expected one of STORM, REM"):
        compose_config("STORM", ["BasicSettings.Family=STROM"])
    cfg = compose_config("GITSTORM", ["+preset=cpu"])
    assert family_of(cfg) is families.FAMILIES["STORM"]            # GIT-STORM is STORM's family
    assert family_of(compose_config("REM", ["+preset=rem_cpu"])).name == "REM"


def test_a_registered_family_gets_its_own_checks(monkeypatch):
    """Adding a family is one registry entry: validation then types and checks a config with
    the family's own schema and checks."""
    seen = []

    def check_config(cfg):
        seen.append(cfg.BasicSettings.Family)
        raise ConfigError("the variant's own check ran")

    variant = replace(families.FAMILIES["STORM"], name="VARIANT", check_config=check_config)
    monkeypatch.setitem(families.FAMILIES, "VARIANT", variant)
    with pytest.raises(ConfigError, match="the variant's own check ran"):
        compose_config("STORM", ["+preset=cpu", "BasicSettings.Family=VARIANT"])
    assert seen == ["VARIANT"]
