"""Every entry script goes through parse_cli/run_cli: same --help, --dry-run, --list-keys, and user
mistakes as one line on stderr with exit status 2.

The entry scripts run as real subprocesses from the repository root; they are started together (a thread
pool) by one module fixture, because each spends a few seconds importing torch.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from vqvdm_scale.config import ConfigError, Flag, UserError, load_config, parse_cli, run_cli

REPO = Path(__file__).resolve().parents[2]
ENTRIES = {
    "make_shards": "data_prep/make_shards.py",
    "encode_latents": "data_prep/encode_latents.py",
    "train_vqgan": "launchers/train_vqgan.py",
    "train_ldm": "launchers/train_ldm.py",
    "sample": "launchers/sample.py",
}
# One example line of each entry's docstring, and one --flag or key shown with its default in --help.
HELP_EXPECT = {
    "make_shards": ("--synthetic --synthetic-classes 4 --resolution 32", "[shard_size; default: 64]"),
    "encode_latents": ("--frames 16 --resolution 32 --windows all", "[windows; default: all]"),
    "train_vqgan": ("python launchers/train_vqgan.py --config configs/vqgan/tiny.yaml", "--list-keys"),
    "train_ldm": ("python launchers/train_ldm.py --config configs/ldm/tiny.yaml", "--list-keys"),
    "sample": ("--class-id 2 --num-clips 4 --overlap 1 --seed 7", "[sample.steps; default: 100]"),
}


@dataclass
class Result:
    rc: int
    out: str
    err: str


def _files(root: Path) -> dict[str, Path]:
    """Inputs for the cases: a run dir with no checkpoint, a non-tokenizer file, bad configs."""
    (root / "run").mkdir()
    (root / "notes.txt").write_text("not a tokenizer\n")
    (root / "bad.yaml").write_text("run:\n  dir: [unclosed\n")
    (root / "a.yaml").write_text("_base_: b.yaml\n")
    (root / "b.yaml").write_text("_base_: a.yaml\n")
    (root / "shards.yaml").write_text(f"input: {root / 'videos'}\noutput: {root / 'out'}\nworkers: 3\n")
    return {"dir": root, "run": root / "run", "txt": root / "notes.txt"}


def _cases(f: dict[str, Path]) -> dict[str, list[str]]:
    d, run, txt = (str(f["dir"]), str(f["run"]), str(f["txt"]))
    sample = ["--tokenizer", txt, "--output", f"{d}/samples"]
    encode = ["--tokenizer", txt, "--output", f"{d}/latents"]
    cases: dict[str, list[str]] = {}
    for name, script in ENTRIES.items():
        cases[f"help/{name}"] = [script, "--help"]
        cases[f"keys/{name}"] = [script, "--list-keys"]
    cases |= {
        # --dry-run: README-style --flags, key=value overrides and --config all reach the config
        "dry/make_shards": [ENTRIES["make_shards"], "-c", f"{d}/shards.yaml", "--synthetic", "--dry-run"]
        + ["--synthetic-classes", "3", "--resolution", "32", "shard_size=5"],
        "dry/encode_latents": [ENTRIES["encode_latents"], *encode, "--input", d, "--windows", "2"]
        + ["--frames", "8", "threads=2", "--dry-run"],
        "dry/train_vqgan": [ENTRIES["train_vqgan"], "--config", "configs/vqgan/tiny.yaml"]
        + ["train.max_steps=7", "--dry-run", "--local_rank=0"],
        "dry/train_ldm": [ENTRIES["train_ldm"], "--dry-run", "train.ema_every=4", "run.dir=/tmp/x"],
        "dry/sample": [ENTRIES["sample"], "--run", run, *sample, "--all-classes", "--steps", "50"]
        + ["--no-quantize", "--guidance", "2.5", "sample.seed=7", "--dry-run"],
        # user mistakes: one line on stderr, exit 2, no traceback
        "err/config_missing": [ENTRIES["train_ldm"], "--config", f"{d}/nope.yaml"],
        "err/yaml_malformed": [ENTRIES["train_ldm"], "--config", f"{d}/bad.yaml"],
        "err/base_loop": [ENTRIES["train_vqgan"], "--config", f"{d}/a.yaml"],
        "err/ema_every_zero": [ENTRIES["train_vqgan"], "train.ema_every=0"],
        "err/input_missing": [ENTRIES["make_shards"], "--input", f"{d}/nope", "--output", f"{d}/o"],
        "err/tokenizer_missing": [ENTRIES["encode_latents"], "--tokenizer", f"{d}/no.safetensors"]
        + ["--input", d, "--output", f"{d}/o"],
        "err/tokenizer_not_export": [ENTRIES["encode_latents"], *encode, "--input", d],
        "err/run_missing": [ENTRIES["sample"], "--run", f"{d}/no_run", *sample],
        "err/run_is_file": [ENTRIES["sample"], "--run", txt, *sample],
        "err/run_no_checkpoint": [ENTRIES["sample"], "--run", run, *sample],
    }
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    cases = _cases(_files(tmp_path_factory.mktemp("cli")))

    def go(argv: list[str]) -> Result:
        p = subprocess.run(
            [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=180, check=False
        )
        return Result(p.returncode, p.stdout, p.stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(go, cases.values()), strict=True))


@pytest.mark.parametrize("name", list(ENTRIES))
def test_help_shows_usage_examples_and_defaults(results: dict[str, Result], name: str) -> None:
    r = results[f"help/{name}"]
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith(f"usage: {Path(ENTRIES[name]).name} ")
    example, default = HELP_EXPECT[name]
    assert "examples:" in lines
    assert any(line.strip().startswith(("python ", "deepspeed ")) and example in line for line in lines)
    assert default in r.out and "--dry-run" in r.out and "--config FILE" in r.out


@pytest.mark.parametrize("name", list(ENTRIES))
def test_list_keys_prints_every_key_with_type_and_default(results: dict[str, Result], name: str) -> None:
    r = results[f"keys/{name}"]
    assert r.rc == 0, r.err
    expected = {
        "make_shards": "synthetic_classes: int = 4",
        "encode_latents": "store: 'indices' | 'latents' = indices",
        "train_vqgan": "train.ema_every: int = 1",
        "train_ldm": "run.dir: str = runs/default",
        "sample": "sample.guidance: float = 4.0",
    }[name]
    assert expected in r.out.splitlines()
    assert all(": " in line and " = " in line for line in r.out.splitlines())


def test_dry_run_resolves_flags_overrides_and_config(results: dict[str, Result]) -> None:
    def dry(name: str) -> dict:
        r = results[f"dry/{name}"]
        assert r.rc == 0, r.err
        return yaml.safe_load(r.out)

    shards = dry("make_shards")
    assert shards["synthetic"] is True and shards["synthetic_classes"] == 3 and shards["workers"] == 3
    assert shards["resolution"] == 32 and shards["shard_size"] == 5 and shards["input"].endswith("videos")
    enc = dry("encode_latents")
    assert enc["windows"] == "2" and enc["frames"] == 8 and enc["threads"] == 2
    assert dry("train_vqgan")["train"]["max_steps"] == 7
    assert dry("train_ldm")["train"]["ema_every"] == 4
    s = dry("sample")
    assert s["all_classes"] is True and s["class_id"] is None
    assert s["sample"] == {**s["sample"], "steps": 50, "quantize": False, "guidance": 2.5, "seed": 7}


@pytest.mark.parametrize(
    "case, words",
    [
        ("config_missing", ["nope.yaml", "does not exist"]),
        ("yaml_malformed", ["bad.yaml", "not valid YAML", "line"]),
        ("base_loop", ["_base_ loop", "a.yaml -> b.yaml -> a.yaml"]),
        ("ema_every_zero", ["train.ema_every must be >= 1"]),
        ("input_missing", ["--input", "does not exist"]),
        ("tokenizer_missing", ["--tokenizer", "does not exist"]),
        ("tokenizer_not_export", ["--tokenizer", "not a readable safetensors tokenizer"]),
        ("run_missing", ["--run", "does not exist"]),
        ("run_is_file", ["--run", "is a file, but a directory is expected"]),
        ("run_no_checkpoint", ["has no complete checkpoint", "--checkpoint"]),
    ],
)
def test_user_mistake_is_one_line_and_exit_2(results: dict[str, Result], case: str, words: list[str]) -> None:
    r = results[f"err/{case}"]
    assert r.rc == 2, (r.rc, r.err[-2000:])
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert r.err.startswith(("error: ", "config error: "))
    for word in words:
        assert word in r.err


# ------------------------------------------- in-process: the entries' own flags through parse_cli/run_cli


def _entry(name: str) -> dict:
    """The globals of an entry script imported under another name (its __main__ guard does not run)."""
    return runpy.run_path(str(REPO / ENTRIES[name]), run_name=f"entry_{name}")


@pytest.mark.parametrize(
    "name, argv, words",
    [
        (
            "sample",
            ["--run", "{d}", "--tokenizer", "{t}", "--stepz", "3"],
            ["unrecognized arguments: --stepz"],
        ),
        (
            "sample",
            ["--run", "{d}", "--tokenizer", "{t}", "--steps", "many"],
            ["sample.steps: expected an integer"],
        ),
        ("sample", ["--run", "{d}", "--tokenizer", "{t}", "--all-classes", "--class-id", "1"], ["not both"]),
        ("sample", ["--checkpoint", "{d}/none", "--tokenizer", "{t}"], ["--checkpoint", "does not exist"]),
        ("encode_latents", ["--input", "{d}", "--output", "{d}/o"], ["--tokenizer is required"]),
        (
            "encode_latents",
            ["--tokenizer", "{d}", "--input", "{d}", "--output", "{d}"],
            ["is a directory, but a file"],
        ),
        ("make_shards", ["--input", "{t}", "--output", "{d}/o"], ["--input", "is a file, but a directory"]),
        (
            "make_shards",
            ["--input", "{d}", "--output", "{d}/o", "--resolution", "33"],
            ["resolution: must be an even"],
        ),
        ("train_vqgan", ["--config", "{d}"], ["is a directory; give a YAML file"]),
        ("train_ldm", ["train.optim.lr=0", "--local_rank=1"], ["lr must be > 0"]),
    ],
)
def test_entry_mistakes_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, argv: list[str], words: list[str]
) -> None:
    (tmp_path / "t.txt").write_text("x")
    g = _entry(name)
    flags = g.get("FLAGS")
    cls = next(v for k, v in g.items() if k.endswith("Config") and isinstance(v, type))
    main = g.get("make_shards") or (lambda cfg: None)
    args = [a.format(d=tmp_path, t=tmp_path / "t.txt") for a in argv]
    with pytest.raises(SystemExit) as e:
        run_cli(cls, main, description=g["__doc__"], flags=flags, argv=args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err


# ------------------------------------------------------------------------------- in-process: the runner


@dataclass
class Inner:
    steps: int = 10
    quantize: bool = True


@dataclass
class Toy:
    input: str = ""
    verbose: bool = False
    inner: Inner = field(default_factory=Inner)


TOY_FLAGS = {
    "input": Flag("input", "an input dir", required=True, path="dir"),
    "verbose": "verbose",
    "steps": "inner.steps",
    "no-quantize": Flag("inner.quantize", "raw", value=False),
}


def test_flags_become_config_values_and_key_value_wins(tmp_path: Path) -> None:
    cfg = parse_cli(
        Toy, ["--input", str(tmp_path), "--steps", "3", "--verbose", "--no-quantize"], flags=TOY_FLAGS
    )
    assert cfg == Toy(str(tmp_path), True, Inner(3, False))
    cfg = parse_cli(Toy, ["inner.steps=5", "--input", str(tmp_path), "--steps", "3"], flags=TOY_FLAGS)
    assert cfg.inner.steps == 5  # key=value overrides --flag, whatever the order on the line


def test_run_cli_turns_user_errors_into_one_line_and_keeps_bug_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--input", str(tmp_path)]

    def raises(exc: BaseException):  # noqa: ANN202 - a main for run_cli
        def main(cfg: Toy) -> None:
            raise exc

        return main

    for exc, status, line in [
        (UserError("no videos in\nthe folder"), 2, "error: no videos in the folder"),
        (ConfigError("bad key"), 2, "config error: bad key"),
        (KeyboardInterrupt(), 130, "error: interrupted"),
    ]:
        with pytest.raises(SystemExit) as e:
            run_cli(Toy, raises(exc), flags=TOY_FLAGS, argv=argv)
        assert e.value.code == status
        assert capsys.readouterr().err == line + "\n"
    with pytest.raises(ZeroDivisionError):  # a bug is not a user mistake: its traceback stays
        run_cli(Toy, raises(ZeroDivisionError()), flags=TOY_FLAGS, argv=argv)
    seen: list[Toy] = []
    run_cli(Toy, seen.append, flags=TOY_FLAGS, argv=argv)
    assert seen == [Toy(str(tmp_path))]


def test_flag_for_an_unknown_key_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="--steps maps to 'inner.stepz'"):
        parse_cli(Toy, ["--steps", "3"], flags={"steps": "inner.stepz"})


def test_load_config_values_are_coerced_and_malformed_override_is_config_error() -> None:
    cfg = load_config(Toy, None, ["inner.steps=4"], {"inner.quantize": "false", "input": "x"})
    assert cfg == Toy("x", False, Inner(4, False))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Toy, None, ["inner.steps=[1,"])
