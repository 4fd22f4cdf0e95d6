"""Every shell command of README.md's quick start, training and evaluation sections parses as
written, without training or evaluating anything.

The commands are read from the README itself (indented or fenced code lines; `\\` continuations
joined, `#` comments dropped, `&&` chains split, a for-loop's body run once with each loop
variable set to its first value) and checked by kind:
- `python train.py ...`: the config (`--config-name`, default STORM) composes with the Hydra
  overrides and validates, as train.py would load it (BasicSettings.config_path included);
- `python eval.py ...`: the flags parse and the config composes, as eval.py would load it;
- `python -m tools.aggregate ...`: the flags parse;
- `./train.sh`, `./evals.sh`, `./eval_manager.sh`: the script exists and `bash -n` accepts it,
  the config it is given is in config_files/ and the extra arguments parse;
- installing (venv, pip), `tensorboard` and `pytest` lines are recognised and skipped.
A command of any other kind fails its test, so a new kind cannot slip by unchecked."""
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import eval as eval_cli
from config import CONFIG_DIR
from families import compose_config
from tools.aggregate.cli import build_parser as aggregate_parser

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("Quick start", "Training", "Evaluation")
PYTHONS = ("python", "python3", ".venv/bin/python")
# The authors' README's commands (Cmeo97/GIT-STORM), which must keep working as written here;
# their sweep is the for-loop with game=Boxing, seed=0.
AUTHORS_COMMANDS = [
    'python train.py BasicSettings.env_name="ALE/Boxing-v5"',
    'python train.py BasicSettings.config_path="config_files/GITSTORM.yaml" BasicSettings.env_name="ALE/Boxing-v5"',
    "./train.sh Boxing 0 STORM",
    "./train.sh Boxing 0 GITSTORM",
    "tensorboard --logdir runs/",
    'python train.py BasicSettings.env_name="ALE/Boxing-v5" BasicSettings.Seed=0 '
    'BasicSettings.config_path="config_files/GITSTORM.yaml" BasicSettings.n="Boxing-GITSTORM-seed_0" '
    "JointTrainAgent.SampleMaxSteps=102000",
    'python eval.py -config_path="config_files/STORM.yaml" -env_name="ALE/Boxing-v5" -run_name="Boxing-STORM-seed_0"',
    "./evals.sh Boxing Boxing-STORM-seed_0 STORM",
    "./eval_manager.sh",
]


def section(markdown: str, title: str) -> str:
    """The text under `## title`, up to the next `## ` heading (its ### subsections included)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def code_lines(text: str) -> list[str]:
    """Lines of indented code blocks (4 spaces, after a blank line) and of ``` fences."""
    lines, in_fence, in_block, previous_blank = [], False, False, True
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif in_fence:
            lines.append(line)
        elif line.startswith("    ") and (in_block or previous_blank):
            in_block = True
            lines.append(line)
        elif line.strip():            # text ends a block; a blank line does not
            in_block = False
        previous_blank = line.strip() == ""
    return lines


def shell_commands(lines: list[str]) -> list[list[str]]:
    """Each simple command as its words: continuations joined, comments dropped, `&&` split;
    a for-loop's body is taken once, with the loop variables at their first values."""
    joined, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            joined.append(pending + line)
            pending = ""
    commands, loop_values = [], {}
    for line in joined:
        loop = re.fullmatch(r"\s*for (\w+) in (\S+).*; do\s*(#.*)?", line)
        if loop:
            loop_values[loop.group(1)] = loop.group(2)
            continue
        if re.fullmatch(r"\s*done\s*(#.*)?", line):
            continue
        for name, value in loop_values.items():
            line = line.replace(f"${{{name}}}", value).replace(f"${name}", value)
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:end])
            words = words[end + 1:]
    return [command for command in commands if command]


def readme_commands() -> list[tuple[str, list[str]]]:
    markdown = (REPO / "README.md").read_text()
    found = [(title, tuple(command)) for title in SECTIONS
             for command in shell_commands(code_lines(section(markdown, title)))]
    return [(title, list(command)) for title, command in dict.fromkeys(found)]   # each once


COMMANDS = readme_commands()


def command_id(item) -> str:
    title, command = item
    return f"{title}: {' '.join(command)}"[:110]


def check_train(args: list[str]) -> None:
    config_name, overrides = "STORM", []
    while args:
        arg = args.pop(0)
        if arg == "--config-name":
            config_name = args.pop(0)
        elif arg.startswith("--config-name="):
            config_name = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            pytest.fail(f"train.py flag {arg!r} is not checked by this test: teach it, or change the README")
        else:
            overrides.append(arg)
    compose_config(config_name, overrides)


def parse_eval_flags(argv: list[str]):
    try:
        return eval_cli.parse_args(argv)
    except SystemExit:
        pytest.fail(f"eval.py does not accept {' '.join(argv)!r} (argparse's message above)")


def check_eval(args: list[str]) -> None:
    parsed = parse_eval_flags(args)
    eval_cli.load_eval_config(parsed.config_path, parsed.env_name, parsed.overrides)


def check_aggregate(args: list[str]) -> None:
    try:
        aggregate_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"tools.aggregate does not accept {' '.join(args)!r} (argparse's message above)")


def check_script(script: str, args: list[str]) -> None:
    path = REPO / script
    assert path.is_file(), f"{script}: no such script"
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, f"bash -n {script}: {syntax.stderr}"
    if script == "eval_manager.sh":   # its arguments go to eval.py for every run
        parse_eval_flags(["-config_path", "STORM", "-env_name", "ALE/Boxing-v5", "-run_name", "x", *args])
        return
    assert len(args) >= 3, f"{script} takes at least 3 arguments, got {args}"
    config = Path(args[2]).stem if script == "evals.sh" else args[2]
    assert (CONFIG_DIR / f"{config}.yaml").is_file(), f"{script}: config {config!r} is not in config_files/"
    if script == "train.sh":          # extra arguments are Hydra overrides
        compose_config(config, args[3:])
    else:                             # extra arguments are eval.py flags and overrides
        parse_eval_flags(["-config_path", config, "-env_name", "ALE/Boxing-v5", "-run_name", args[1], *args[3:]])


def is_setup(command: list[str]) -> bool:
    """Installing, TensorBoard and the test suite: recognised, nothing to check."""
    program = Path(command[0]).name
    return (program in ("pip", "pip3", "tensorboard", "pytest")
            or (command[0] in PYTHONS and command[1:3] in (["-m", "venv"], ["-m", "pytest"], ["-m", "pip"])))


@pytest.mark.parametrize("item", COMMANDS, ids=command_id)
def test_readme_command_parses(item, monkeypatch):
    monkeypatch.chdir(REPO)
    _, command = item
    if is_setup(command):
        return
    if command[0] in PYTHONS and command[1:2] == ["train.py"]:
        check_train(command[2:])
    elif command[0] in PYTHONS and command[1:2] == ["eval.py"]:
        check_eval(command[2:])
    elif command[0] in PYTHONS and command[1:3] == ["-m", "tools.aggregate"]:
        check_aggregate(command[3:])
    elif command[0] in ("./train.sh", "./evals.sh", "./eval_manager.sh"):
        check_script(command[0][2:], command[1:])
    else:
        pytest.fail(f"no check for this kind of command: {' '.join(command)!r}; add one to this test")


def test_the_authors_commands_are_in_the_readme():
    found = [command for _, command in COMMANDS]
    missing = [line for line in AUTHORS_COMMANDS if shlex.split(line) not in found]
    assert not missing, f"the authors' commands must stay in README.md as written: {missing}"


def test_extraction_of_loops_chains_continuations_and_comments():
    text = """
Intro text, not code.

    a --x 1 && b "two words"   # a comment
    for game in Boxing Pong; do
      for seed in 0 1; do
        run ${game} \\
          seed=${seed}
      done
    done
"""
    assert shell_commands(code_lines(text)) == [
        ["a", "--x", "1"], ["b", "two words"], ["run", "Boxing", "seed=0"]]
