"""Behaviour 7: bad configs are refused at construction, naming the field, the value and the fix."""

from __future__ import annotations

import pytest

from morsearch.config import ModelConfig, load_config
from morsearch.errors import ConfigError

BASE = dict(vocab_size=64, d_model=32, num_heads=4, ffn_dim=64, num_layers=4)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(num_heads=5), ["num_heads=5 must divide d_model=32", "allowed num_heads: [1, 2, 4, 8, 16, 32]"]),
        (dict(num_kv_heads=3), ["num_kv_heads=3 must divide num_heads=4"]),
        (dict(num_recursions=3, sharing="cycle"), ["num_layers=4", "use num_layers=6"]),
        (dict(num_recursions=3, sharing="middle_cycle"), ["num_layers - 2", "use num_layers=5"]),
        (dict(num_recursions=2), ["sharing='none'", "needs num_recursions=1"]),
        (dict(num_recursions=2, sharing="sequence", router="expert_choice"), ["whole-block recursion step"]),
        (
            dict(num_recursions=2, sharing="cycle", router="expert_choice", capacities=(1.0, 1.5)),
            ["capacities=[1.0, 1.5] must each lie in (0, 1]"],
        ),
        (
            dict(num_recursions=2, sharing="cycle", router="expert_choice", capacities=(0.5, 1.0)),
            ["must be non-increasing"],
        ),
        (
            dict(num_recursions=2, sharing="cycle", router="expert_choice", router_gate="softmax"),
            ["allowed: sigmoid, tanh"],
        ),
        (dict(sharing="middle_cylce"), ["sharing", "did you mean 'middle_cycle'", "'middle_cylce'"]),
        (dict(num_recursion=2), ["unknown key 'num_recursion'", "did you mean 'num_recursions'"]),
        (dict(d_model=-4), ["d_model", "greater than or equal to 8", "-4"]),
    ],
)
def test_bad_configs_name_field_value_and_fix(changes, expected):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{**BASE, **changes})
    for fragment in expected:
        assert fragment in str(info.value)


def test_configs_are_frozen():
    cfg = ModelConfig(**BASE)
    with pytest.raises(Exception, match="frozen"):
        cfg.d_model = 64  # type: ignore[misc]
    assert cfg.replace(d_model=64).d_model == 64


def test_paper_defaults_resolve_per_router():
    ec = ModelConfig(**{**BASE, "num_recursions": 3, "num_layers": 3, "sharing": "cycle", "router": "expert_choice"})
    assert (ec.gate, ec.alpha, ec.step_capacities) == ("sigmoid", 0.1, (1.0, 2 / 3, 1 / 3))
    tc = ec.replace(router="token_choice")
    assert (tc.gate, tc.alpha) == ("softmax", 1.0)
    assert ec.replace(capacity_schedule="geometric").step_capacities == (1.0, 0.5, 0.25)


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model:\n  d_model: 32\n  num_heads: 4\n  ffn_dim: 64\n  num_layers: 4\n  routr: none\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ModelConfig, section="model")
    assert f"{path}:6: model.routr: unknown key 'routr'; did you mean 'router'?" in str(info.value)


RECURSIVE = dict(BASE, num_recursions=2, sharing="cycle")  # router none: every token every step


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("router_network", "mlp", "'mlp'"),
        ("router_gate", "tanh", "'tanh'"),
        ("router_alpha", 0.3, "0.3"),
        ("capacity_schedule", "geometric", "'geometric'"),
        ("capacities", (1.0, 0.5), "[1.0, 0.5]"),
        ("router_aux_loss_coeff", 0.01, "0.01"),
        ("balancing", "loss_free", "'loss_free'"),
        ("balancing_coeff", 0.3, "0.3"),
        ("balancing_update_rate", 0.01, "0.01"),
        ("router_z_loss_coeff", 1e-3, "0.001"),
    ],
)
def test_router_options_without_a_router_are_refused(field, value, shown):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**RECURSIVE, **{field: value})
    message = str(info.value)
    assert f"{field}={shown} has no effect with router='none'" in message
    assert f"remove {field}, or set router='expert_choice' or 'token_choice'" in message
    from morsearch.config.model import SINGLE_ROUTER_FIELDS

    ModelConfig(**RECURSIVE, router=SINGLE_ROUTER_FIELDS.get(field, "expert_choice"), **{field: value})


@pytest.mark.parametrize(
    "field, value, owner",
    [
        ("capacity_schedule", "geometric", "expert_choice"),
        ("router_aux_loss_coeff", 0.01, "expert_choice"),
        ("balancing", "loss_free", "token_choice"),
        ("balancing_coeff", 0.3, "token_choice"),
        ("balancing_update_rate", 0.01, "token_choice"),
    ],
)
def test_options_of_the_other_router_are_refused(field, value, owner):
    other = "token_choice" if owner == "expert_choice" else "expert_choice"
    with pytest.raises(ConfigError) as info:
        ModelConfig(**RECURSIVE, router=other, **{field: value})
    message = str(info.value)
    assert f"{field}={value!r} applies to router='{owner}' only and has no effect with router='{other}'" in message
    assert f"remove {field}, or set router='{owner}'" in message
    trained = ModelConfig(**RECURSIVE, router=owner, **{field: value})
    assert ModelConfig(**trained.model_dump(mode="json")) == trained  # a stored full dump loads again
    ModelConfig(**RECURSIVE, router=other, **{field: ModelConfig.model_fields[field].default})  # a default is fine


def test_router_fields_cover_every_router_option():
    from morsearch.config.model import ROUTER_FIELDS

    options = {name for name in ModelConfig.model_fields if name.startswith(("router_", "capacit", "balancing"))}
    assert set(ROUTER_FIELDS) == options


def test_router_defaults_are_not_refused_without_a_router():
    plain = ModelConfig(**RECURSIVE)
    assert plain.router == "none" and plain.gate == "none" and plain.alpha == 1.0
    # a full dump (as trial records store it) names every field with its default: it must load again
    assert ModelConfig(**plain.model_dump(mode="json")) == plain
    # an explicitly given default changes nothing and is accepted
    ModelConfig(**RECURSIVE, router="none", router_gate=None, balancing="loss", router_z_loss_coeff=0.0)
    # several ignored options are all reported at once
    with pytest.raises(ConfigError) as info:
        ModelConfig(**RECURSIVE, router_gate="sigmoid", capacities=(1.0, 0.5))
    assert "router_gate='sigmoid'" in str(info.value) and "capacities=[1.0, 0.5]" in str(info.value)
