"""The shared config system: YAML + overrides round trip, presets, and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from vqvdm_scale.config import ConfigError, dump_config, load_config, to_dict
from vqvdm_scale.config.core import presets
from vqvdm_scale.engine.config import TrainConfig
from vqvdm_scale.train.config import RunConfig


@dataclass
class Model:
    width: int = 8
    mult: tuple[int, ...] = (1, 2)
    kind: Literal["3d", "factorized"] = "3d"


MODEL_PRESETS = {"small": Model(width=4), "big": Model(width=64, mult=(1, 2, 4))}


@dataclass
class Root:
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Model = field(default_factory=Model, metadata=presets(lambda name: MODEL_PRESETS[name]))
    tokenizer: Optional[str] = None


def test_yaml_overrides_and_round_trip(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("run:\n  dir: /tmp/x\n  log_every: 3\nmodel:\n  width: 16\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\ntrain:\n  zero_stage: 3\n  optim:\n    lr: 0.001\n")
    cfg = load_config(
        Root, child, ["model.mult=[1,2,4]", "train.optim.betas=[0.5,0.9]", "tokenizer=/a/b.safetensors"]
    )
    assert cfg.run.dir == "/tmp/x" and cfg.run.log_every == 3
    assert cfg.model.width == 16 and cfg.model.mult == (1, 2, 4)
    assert cfg.train.zero_stage == 3 and cfg.train.optim.lr == 1e-3 and cfg.train.optim.betas == (0.5, 0.9)
    assert cfg.tokenizer == "/a/b.safetensors"
    out = dump_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Root, out)
    assert to_dict(again) == to_dict(cfg)


def test_unknown_key_names_the_key_and_allowed_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.optim\.lrr'.*allowed keys.*\blr\b"):
        load_config(Root, None, ["train.optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'bogus'"):
        load_config(Root, None, ["bogus=1"])


def test_bad_values_name_key_and_allowed_values() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.kind: 'x' is not allowed; choose one of '3d', 'factorized'"
    ):
        load_config(Root, None, ["model.kind=x"])
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer"):
        load_config(Root, None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match=r"zero_stage must be one of 0, 1, 2, 3"):
        load_config(Root, None, ["train.zero_stage=4"])
    with pytest.raises(ConfigError, match=r"must look like section.key=value"):
        load_config(Root, None, ["train.max_steps"])


def test_presets_fill_a_section_and_keys_override_them() -> None:
    cfg = load_config(Root, None, ["model.preset=big", "model.width=32"])
    assert cfg.model.width == 32 and cfg.model.mult == (1, 2, 4)
    with pytest.raises(ConfigError, match="preset"):
        load_config(Root, None, ["model.preset=nope"])


def test_bad_config_files_are_config_errors_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: [ok.yaml, c.yaml]\n")
    (tmp_path / "c.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "ok.yaml").write_text("tokenizer: t\n")
    with pytest.raises(ConfigError, match=r"_base_ loop in config files: b\.yaml -> c\.yaml -> b\.yaml"):
        load_config(Root, tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("run:\n  dir: x\n   seed: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml' is not valid YAML: .* at line 3"):
        load_config(Root, tmp_path / "bad.yaml")
    (tmp_path / "d.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml' \(the _base_ of .*d\.yaml\) does not exist"):
        load_config(Root, tmp_path / "d.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(Root, tmp_path)
    # diamond inheritance (two files sharing a base) is not a loop
    (tmp_path / "e.yaml").write_text("_base_: [ok.yaml, f.yaml]\n")
    (tmp_path / "f.yaml").write_text("_base_: ok.yaml\nmodel:\n  width: 3\n")
    assert load_config(Root, tmp_path / "e.yaml").model.width == 3


def test_cadences_and_optimiser_values_are_validated() -> None:
    for override, words in [
        ("train.ema_every=0", "train.ema_every must be >= 1"),
        ("train.ema_every=-2", "train.ema_every must be >= 1"),
        ("run.ckpt_every=0", "run.ckpt_every must be >= 1"),
        ("train.optim.betas=[0.9,1.0]", r"betas must each be in \[0, 1\)"),
        ("train.optim.eps=0", "eps > 0"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_config(Root, None, [override])
