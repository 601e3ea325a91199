"""Typed settings (sqdf_bbo/settings.py): coercion, ranges, one-line errors before any query, --help-settings."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Optional, Union

import pytest

from sqdf_bbo import settings as S
from sqdf_bbo.agents import resolve_method
from sqdf_bbo.settings import setting
from sqdf_bbo.tasks import make_task


@dataclass
class Demo:
    n: int = setting(3, "a count", ge=1)
    p: float = setting(0.5, "a fraction", gt=0, le=1)
    flag: bool = setting(False, "a switch")
    mode: str = setting("a", "a choice", choices=("a", "b"))
    k: Union[int, str, None] = setting(2, "int or 'all'")
    opt: Optional[float] = setting(None, "optional number", ge=0)


def test_coercion_to_field_types():
    r = S.resolve(Demo, {"n": "4", "p": 1, "flag": "true", "mode": "b", "k": "all", "opt": 2})
    assert r == {"n": 4, "p": 1.0, "flag": True, "mode": "b", "k": "all", "opt": 2.0}
    assert type(r["n"]) is int and type(r["p"]) is float
    assert S.resolve(Demo, {"n": 5.0})["n"] == 5 and S.resolve(Demo, {"k": 7})["k"] == 7
    assert S.resolve(Demo, {}) == S.defaults(Demo)


@pytest.mark.parametrize("over, msg", [
    ({"n": 0}, "setting n=0 is out of range: must be >= 1"),
    ({"n": 1.5}, "setting n=1.5 must be int (>= 1)"),
    ({"n": True}, "setting n=True must be int"),
    ({"p": 0}, "setting p=0 is out of range: must be > 0 and <= 1"),
    ({"p": float("nan")}, "setting p=nan must be float"),
    ({"flag": "maybe"}, "setting flag='maybe' must be bool"),
    ({"mode": "c"}, "setting mode='c' must be one of 'a', 'b'"),
    ({"opt": -1}, "setting opt=-1 is out of range: must be >= 0"),
    ({"zzz": 1}, "unknown setting(s) 'zzz'; allowed: flag, k, mode, n, opt, p"),
])
def test_bad_values_are_one_line_errors_naming_key_value_and_rule(over, msg):
    with pytest.raises(ValueError) as e:
        S.resolve(Demo, over)
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_every_builtin_method_is_typed_and_task_defaults_apply():
    info = make_task("levy").info
    for name in ("pretrained", "sqdf", "ddpo", "ddpo-sf", "alignprop", "draft", "draft-k", "draft-1",
                 "draft-lv", "adjoint-matching", "seiko"):
        cls = resolve_method(name)
        assert cls.typed_settings() is not None, name
        cfg = cls.resolve_config(info, {"num_steps": "7"})
        assert cfg["num_steps"] == 7 and set(cfg) == set(cls.default_config)
        S.describe(cls.typed_settings())  # every field documents itself
        assert all(f.metadata.get("doc") for f in __import__("dataclasses").fields(cls.typed_settings()))


def test_cli_refuses_bad_setting_before_any_work(tmp_path):
    out = tmp_path / "runs"
    p = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", "--task", "levy", "--method", "sqdf", "--budget", "8",
                        "--out", str(out), "--set", "gamma=2"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: setting gamma=2 is out of range: must be > 0 and <= 1"
    assert not out.exists()


def test_help_settings_prints_types_defaults_and_docs():
    p = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", "--method", "seiko", "--help-settings"],
                       capture_output=True, text=True)
    assert p.returncode == 0
    line = next(ln for ln in p.stdout.splitlines() if ln.split()[:1] == ["kl_reference"])
    assert "str" in line and "'previous'" in line and "one of 'previous', 'pretrained'" in line


def test_batch_size_above_budget(tmp_path):
    """The task's default batch (64 on levy) shrinks to a smaller budget; an explicit one is refused at build."""
    from sqdf_bbo.run import main

    assert main(["--task", "levy", "--method", "random", "--budget", "24", "--out", str(tmp_path), "--no-progress",
                 "--set", "run.n_eval=8"]) == 0
    cfg = __import__("json").loads((tmp_path / "levy__random__b24__s0" / "config.json").read_text())
    assert cfg["run"]["batch_size"] == 24
    p = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", "--task", "levy", "--method", "random", "--budget", "24",
                        "--out", str(tmp_path / "o"), "--set", "run.batch_size=64"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == "error: run.batch_size=64 must be <= the budget 24"
    assert not (tmp_path / "o").exists()


def test_agents_read_typed_settings_and_give_the_proxy_its_own():
    """self.cfg is the agent's Settings instance holding exactly self.config's (coerced) values; the proxy gets
    them as a ProxySettings. An untyped plug-in's proxy keys are checked (and missing ones defaulted) there."""
    from dataclasses import fields

    from sqdf_bbo.agents.online import ProxyGuidedAgent
    from sqdf_bbo.proxy import ProxySettings

    info = make_task("levy").info
    cls = resolve_method("best-of-n")
    agent = cls(info, {"num_steps": "4", "proxy_heads": "2", "oversample": 3.0, "proxy_lr": 1})
    assert type(agent.cfg) is cls.Settings and vars(agent.cfg) == agent.config
    assert (agent.cfg.num_steps, agent.cfg.oversample, agent.cfg.proxy_lr) == (4, 3, 1.0)
    assert type(agent.cfg.oversample) is int and type(agent.cfg.proxy_lr) is float
    ps = agent.proxy_settings()
    assert type(ps) is ProxySettings
    assert {f.name: getattr(ps, f.name) for f in fields(ProxySettings)} == {
        f.name: agent.config[f.name] for f in fields(ProxySettings)}

    class Plain(ProxyGuidedAgent):  # a plug-in with a plain dict: no proxy_hidden, a string proxy_heads
        default_config = dict({k: v for k, v in ProxyGuidedAgent.default_config.items() if k != "proxy_hidden"},
                              proxy_heads="3")

    plain = Plain(info, {"num_steps": 4})
    assert Plain.typed_settings() is None and plain.cfg.proxy_heads == "3"
    assert plain.proxy_settings() == ProxySettings(proxy_heads=3)
    with pytest.raises(ValueError, match="setting proxy_heads=0 is out of range"):
        Plain(info, {"num_steps": 4, "proxy_heads": 0}).proxy_settings()
