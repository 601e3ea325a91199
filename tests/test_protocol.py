"""The protocol id (sqdf_bbo/protocol.py): golden fingerprints of what runs compute, and an id that moves
with every result-relevant input and stays put under changes that compute the same thing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sqdf_bbo import protocol
from sqdf_bbo.run import Run, build_parser, run_experiment

#: `python -m sqdf_bbo.protocol --fingerprints` at PROTOCOL_VERSION 1, every component at version 1
GOLDEN = {
    'harness/metrics': [3.3229995166448827, 3.3229995166448827, 1.3959199983553128, 0.8330179732750644, 0.0, 9.32636569958027, 4.402041142044877, 6.5417261501016535, 3.0631763691085605, 1.1834274742275426],
    'harness/evaluation/levy/pretrained': [-44.74653754642878, 18.798044965839605, 0.0, 3.2572704324096033, 3.2572704324096033, 1.246487164303242, -16.347335668091624, 0.0],
    'task/ackley': [-19.95108965071752, -20.0233764239108, -20.713345291584336, -21.42720018678745, -21.330104261845825, -21.647180935543147, 0.07964306566462054, -50.90132292974823, 0.5, 4.498873967937795, 2.3750324531551468, 2.1253547131149113],
    'task/ackley-manifold': [-19.95108965071752, -20.0233764239108, -20.713345291584336, -21.623265322773054, -21.623265322773054, -21.623265322773054, 0.07964306566462054, -50.90132292974823, 0.5, 4.498873967937795, 2.3750324531551468, 2.1253547131149113],
    'task/levy': [-30.241446540819666, -65.56186897024598, -59.61114695599985, -179.07241701357825, -90.77124297129014, -112.3438824236361, 1.921522153842428, -39.41661714054079, 0.5, 4.526028389019095, 2.2741798895561542, 2.091668573114288],
    'task/levy-manifold': [-30.241446540819666, -65.56186897024598, -59.61114695599985, -144.77373347818963, -144.77373347818963, -144.77373347818963, 1.921522153842428, -39.41661714054079, 0.5, 4.526028389019095, 2.2741798895561542, 2.091668573114288],
    'task/rastrigin': [-115.26220604650129, -112.37034167065497, -113.8753326415918, -142.15896876899512, -130.57601962029577, -186.48933079730085, 2.1813100287248175, -29.273443261321063, 0.5, 4.7534668417028, 2.386998203680932, 2.151668632701202],
    'task/rastrigin-manifold': [-115.26220604650129, -112.37034167065497, -113.8753326415918, -182.2126115840917, -182.2126115840917, -182.2126115840917, 2.1813100287248175, -29.273443261321063, 0.5, 4.7534668417028, 2.386998203680932, 2.151668632701202],
    'task/rosenbrock': [-313486.91022934375, -330110.6088626174, -370549.5012985619, -160755.9054169991, -1937226.5084985166, -1309979.3131122522, 15910.465884504834, -44.688493616613336, 0.5, 4.232838891012313, 2.3069481917722263, 2.0687385003880476],
    'task/rosenbrock-manifold': [-313486.91022934375, -330110.6088626174, -370549.5012985619, -1211114.7805286425, -1211114.7805286425, -1211114.7805286425, 15910.465884504834, -44.688493616613336, 0.5, 4.232838891012313, 2.3069481917722263, 2.0687385003880476],
    'task/hartmann6': [0.2792054376083338, 0.7200204575543292, 0.19552137967650057, 0.6180955256708434, 0.14436124534784706, 0.00688242354500371, 0.015569808828307606, -6.912227550118118, 0.5, 3.499368172336251, 1.8780145516863578, 1.4527543376233016],
    'task/hartmann6-manifold': [0.2792054376083338, 0.7200204575543292, 0.19552137967650057, 0.0020280799550141575, 0.0020280799550141575, 0.0020280799550141575, 0.015569808828307606, -6.912227550118118, 0.5, 3.499368172336251, 1.8780145516863578, 1.4527543376233016],
    'task/styblinski-tang': [137.52610917578286, -37.83199500335665, 101.77392604839079, -53.23784617610572, -100.84633785840437, 25.792032730832346, 3.7244596479551784, -38.26387348860546, 0.5, 4.767406223039317, 2.3949320219952046, 2.088602140324244],
    'task/styblinski-tang-manifold': [137.52610917578286, -37.83199500335665, 101.77392604839079, -177.2352051853498, -177.2352051853498, -177.2352051853498, 3.7244596479551784, -38.26387348860546, 0.5, 4.767406223039317, 2.3949320219952046, 2.088602140324244],
    'backbone/mlp_levy': [0.6018037653747612, -3.431898229377799, -2.3206196802410624, -2.218770837297738, 0.5997129379321073, -3.8948478381441642, 1.7391265539544225, 5.088423995719381, 3.003295410893589, 1.2593829408514416, 1.7903127444653357, -0.193340803127672, 5.202364511606568, -2.0282530389372813, -2.7998947221249093, -1.2948620027438515, -3.8212118075542536, -2.355456424489394, -0.05393221573548246, 6.312607437029904, -2.1468788236442293, -1.392347230354499, -4.9109234650401845e-05, 2.823347593882236, 301.9821738270103, 681.5803534139294, 1343.7475706202372],
    'backbone/mlp_ackley': [-11.313803470407194, -3.6473931833479867, -14.394005817357073, -9.142299897782777, 2.6688623765701607, -1.044638360596533, 7.5499010901994765, 13.452453955635526, -6.937546773698752, 9.993756583483552, 6.098284110536113, 5.7660076451301165, 20.88721817350727, -6.781906366013555, -9.969804653414915, -7.9850177574434795, -24.720763348914595, 1.5396729052405576, 3.2656867480503635, 17.65310898423072, 5.864334840916165, 5.760783330092323, 0.48417604999839625, 3.8601669760898716, 312.6365480639503, 586.5253907505373, 1291.6942973819907],
    'backbone/unet16': [0.0006452073489433668, 1.5038550809727784, -0.08762575993028786, -0.8549189924252278, 0.6733410208520301, 0.35274326081708685, -0.3039361829824693, -1.4000731771331782, 0.2784263313576331, 1.0304994195724464],
    'task/aesthetic': [1.84868586063385, 2.4835290908813477, 6.398559093475342, 7.83272647857666, 2.5324769020080566, 1.8673315048217773, 5.005611419677734, 4.650430679321289, 1.84868586063385, 2.4835290908813477, -3.486957311630249, -3.486957311630249, 3.4876906635212577, 25.61037722130894, 0.1],
}


def test_golden_fingerprints_match_the_committed_values():
    specs = protocol.fingerprint_specs()
    assert sorted(s.key for s in specs) == sorted(GOLDEN), "fingerprints added or removed: update GOLDEN"
    moved = []
    for s in specs:
        got, want = s.compute(), GOLDEN[s.key]
        if len(got) != len(want) or not np.allclose(got, want, rtol=s.rtol, atol=0.0):
            bad = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if not math.isclose(w, g, rel_tol=s.rtol)]
            moved.append(f"{s.key} (first differences [index, expected, got]: {bad[:3]}): bump {s.bump}")
    assert not moved, ("what runs compute changed, so new runs must get a new protocol id. For each moved "
                       "fingerprint bump the version named, then regenerate GOLDEN with `python -m "
                       "sqdf_bbo.protocol --fingerprints`:\n" + "\n".join(moved))


def test_golden_values_belong_to_the_current_versions():
    from sqdf_bbo.tasks.image import ImageTask
    from sqdf_bbo.tasks.synthetic import SyntheticTask

    # GOLDEN was made at these versions: after a bump, regenerate GOLDEN and update this line
    assert (protocol.PROTOCOL_VERSION, getattr(SyntheticTask, "protocol_version", 1),
            getattr(ImageTask, "protocol_version", 1)) == (1, 1, 1)


# ---- canonical JSON ----------------------------------------------------------------------------
def test_canonical_ignores_key_order_number_types_and_tuples():
    a = {"b": [1, 2.5, (3, True)], "a": {"y": np.float64(0.5), "x": np.int64(2)}, "z": -0.0}
    b = {"z": 0.0, "a": {"x": 2.0, "y": 0.5}, "b": [1.0, 2.5, [3.0, True]]}
    assert protocol.protocol_id(a) == protocol.protocol_id(b)
    assert protocol.protocol_id(a) != protocol.protocol_id({**b, "z": 1.0})
    assert protocol.canonical(True) is True and protocol.canonical(1) == 1.0  # a bool is not a number
    assert protocol.canonical({"f": float("nan"), "g": print}) == {"f": "nan", "g": "<builtin_function_or_method>"}


# ---- the id of a run ---------------------------------------------------------------------------
def _record(tmp_path, *sets, task="levy", method="sqdf", budget=40, seed=0):
    argv = ["--task", task, "--method", method, "--budget", str(budget), "--seed", str(seed), "--out", str(tmp_path)]
    for s in sets:
        argv += ["--set", s]
    run = Run(build_parser().parse_args(argv))
    try:
        return run, run.config_record()
    finally:
        getattr(run, "close", lambda: None)()  # release the run folder for the next Run on it


def _id(tmp_path, *sets, **kw) -> str:
    return _record(tmp_path, *sets, **kw)[1]["protocol"]


def test_the_id_stays_put_under_changes_that_compute_the_same_thing(tmp_path):
    base = _id(tmp_path)
    assert base.startswith(f"v{protocol.PROTOCOL_VERSION}-") and len(base.split("-")[1]) == 12
    assert _id(tmp_path, seed=3) == base  # seeds of one protocol are pooled
    assert _id(tmp_path, "lr=0.001") == _id(tmp_path, "lr=1e-3")
    assert _id(tmp_path, "lr=1") == _id(tmp_path, "lr=1.0")  # typed setting: int and float resolve equal
    assert _id(tmp_path, "task.noise_std=2") == _id(tmp_path, "task.noise_std=2.0")  # raw task override
    assert _id(tmp_path, "run.checkpoint_every=5", "run.checkpoint_every_s=0", "run.oracle_retries=0",
               "run.oracle_retry_wait_s=0") == base
    from sqdf_bbo.backbones.base import compute_dtype_for

    picked = "fp32" if compute_dtype_for("auto") is None else "bf16"  # what auto computes on this machine
    assert _id(tmp_path, "run.precision=auto") == _id(tmp_path, f"run.precision={picked}")
    run, rec = _record(tmp_path)
    sizes = rec["round_sizes"]
    assert _id(tmp_path, f"run.round_sizes={sizes}") == base  # explicit sizes equal to the doubling
    tracked = {**rec, "run": {**rec["run"], "tracker": "wandb"}}
    reordered = dict(reversed(list(tracked.items())))
    assert protocol.run_protocol(reordered, run.task, run.agent_cls)["protocol"] == base


def test_every_result_relevant_input_moves_the_id(tmp_path, monkeypatch):
    run, rec = _record(tmp_path)
    base = rec["protocol"]
    changed = [_id(tmp_path, budget=48), _id(tmp_path, "run.n_eval=128"), _id(tmp_path, "run.batch_size=8"),
               _id(tmp_path, "run.rounds=2"), _id(tmp_path, "run.precision=bf16"),
               _id(tmp_path, "run.channels_last=False"), _id(tmp_path, "lr=0.5"), _id(tmp_path, "task.noise_std=2"),
               _id(tmp_path, "task.num_steps=20"), _id(tmp_path, task="ackley"), _id(tmp_path, method="seiko"),
               protocol.run_protocol({**rec, "world_size": 2}, run.task, run.agent_cls)["protocol"]]
    assert base not in changed and len(set(changed)) == len(changed)

    def again() -> str:
        return protocol.run_protocol(rec, run.task, run.agent_cls)["protocol"]

    assert again() == base
    with monkeypatch.context() as m:
        m.setattr(protocol, "PROTOCOL_VERSION", 2)
        assert again().startswith("v2-")
    with monkeypatch.context() as m:
        m.setattr(type(run.task), "protocol_version", 2, raising=False)
        assert again() not in (base, *changed)
    with monkeypatch.context() as m:
        m.setattr(run.agent_cls, "protocol_version", 2, raising=False)
        assert again() not in (base, *changed)
    assert again() == base


def test_an_asset_change_moves_the_id(tmp_path, monkeypatch):
    run, rec = _record(tmp_path / "out")
    assets = tmp_path / "weights"
    assets.mkdir()
    (assets / "prior.safetensors").write_bytes(b"weights v1")
    (assets / ".hidden").write_bytes(b"ignored")
    monkeypatch.setattr(protocol, "ASSET_DIRS", (assets,))
    first = protocol.run_protocol(rec, run.task, run.agent_cls)
    assert list(first["protocol_inputs"]["assets"]) == ["weights/prior.safetensors"]
    (assets / ".hidden").write_bytes(b"still ignored")
    assert protocol.run_protocol(rec, run.task, run.agent_cls)["protocol"] == first["protocol"]
    (assets / "prior.safetensors").write_bytes(b"weights v2, retrained")
    assert protocol.run_protocol(rec, run.task, run.agent_cls)["protocol"] != first["protocol"]
    assert first["protocol"] != rec["protocol"]  # the real assets are in the real id


def test_a_setting_added_later_is_neutral_at_its_old_behaviour(tmp_path, monkeypatch):
    run, rec = _record(tmp_path)
    with_new = {**rec, "agent": {**rec["agent"], "new_knob": "old"}}
    monkeypatch.setitem(protocol.NEUTRAL_AT, "agent", {"new_knob": "old"})
    pid = lambda r: protocol.run_protocol(r, run.task, run.agent_cls)["protocol"]  # noqa: E731
    assert pid(with_new) == rec["protocol"]
    assert pid({**rec, "agent": {**rec["agent"], "new_knob": "new"}}) != rec["protocol"]


def test_a_run_records_its_protocol_machine_and_task_protocol(tmp_path):
    from benchmarks.report import leaderboard as lb

    run_experiment("levy", "random", budget=24, seed=0, out=str(tmp_path), run_settings={"n_eval": 8, "rounds": 2})
    run_dir = tmp_path / "levy__random__b24__s0"
    cfg = json.loads((run_dir / "config.json").read_text())
    _, rec = _record(tmp_path / "other", "run.n_eval=8", "run.rounds=2", method="random", budget=24, seed=5)
    assert cfg["protocol"] == rec["protocol"] == protocol.protocol_id(cfg["protocol_inputs"])
    assert isinstance(cfg["cpu_model"], str) and cfg["cpu_model"] and cfg["torch_threads"] >= 1
    finals, _ = lb.load_runs([tmp_path])
    assert finals.loc[0, "protocol"] == cfg["protocol"] and finals.loc[0, "cpu_model"] == cfg["cpu_model"]
    # methods on one task share its task protocol; another task has another
    _, sqdf = _record(tmp_path / "x", method="sqdf", budget=40)
    _, ackley = _record(tmp_path / "y", task="ackley", method="random", budget=24)
    tp = protocol.task_protocol_of
    assert tp(cfg) == tp(sqdf) != tp(ackley) and cfg["protocol"] != sqdf["protocol"]
    assert tp({"task": "levy"}) == protocol.protocol_of({"task": "levy"}) == "legacy"
